//! Creating a fleet (`nexus init`) and admitting nodes (`nexus join`, and the anchor's side of it).
//!
//! The join protocol runs over QUIC (ALPN `nexus-join/1`): the joining node checks that the
//! anchor's certificate chains to the root fingerprint in its token, opens one bidirectional
//! stream, writes a [`JoinRequest`] (JSON) and reads a [`JoinResponse`]. The anchor checks the
//! token and the tenant's node quota, issues a MIC for the CSR's key (from its CA for the
//! token's tenant, see `tenant_ca.rs`) and records the use in one SQLite transaction before it
//! answers.
//!
//! **Node quota.** When the fleet document gives the token's tenant `quotas.max_nodes`, the
//! anchor counts that tenant's nodes: the fleet document's members of the tenant that are not
//! decommissioned or removed, plus nodes this anchor certified for it (its `certificates`
//! table: unrevoked, unexpired) that the fleet document does not record yet. A join that would
//! go past the quota is refused (`quota_exceeded`); a node already counted joining again is not
//! a new node. One anchor checks and admits one such join at a time, so it never overshoots by
//! itself; two anchors admitting for the same tenant at the same moment each count what they
//! know, and can together overshoot by at most one node per anchor until the fleet document
//! brings their members together.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nexus_ca::{
    CertificateAuthority, JoinToken, MicProfile, NodeId, NodeKey, Refusal, Role, TokenRecord,
    check_admission, der_to_pem, pem_to_der, public_key_from_csr,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cakeys::{self, CaKeyFlags};
use crate::config::AddrFlags;
use crate::datadir::{self, DataDir};
use crate::store::{Enrollment, Identity, Store, TokenRow};
use crate::{DEFAULT_SITE, DEFAULT_TENANT, now_ms};

/// Most bytes of tenant CA certificates an admission answer carries (the node learns any
/// others from the fleet document); keeps the answer well under [`MAX_RESPONSE`].
const MAX_TENANT_CA_BYTES: usize = 256 * 1024;

/// ALPN of the join protocol.
pub const ALPN_JOIN: &[u8] = b"nexus-join/1";
/// Most labels a joining node may ask for.
const MAX_LABELS: usize = 64;
/// Largest join request accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Largest join response accepted.
const MAX_RESPONSE: usize = 1024 * 1024;

/// What a joining node sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Protocol version (1).
    pub v: u32,
    /// Fleet named by the token.
    pub fleet_id: String,
    /// Token id.
    pub token_id: String,
    /// Token secret, base64url.
    pub secret: String,
    /// PKCS#10 CSR for the node key, PEM.
    pub csr_pem: String,
    /// Site the node asks for.
    pub site: Option<String>,
    /// Labels the node asks for.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// An API key hash handed to joining nodes so they can authenticate API calls locally.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyHash {
    /// Key id.
    pub id: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// Role.
    pub role: String,
}

/// What the anchor answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinResponse {
    /// Admitted.
    Accepted(Box<Admission>),
    /// Refused, with a message for the operator.
    Refused {
        /// Stable code.
        code: String,
        /// What was wrong and what to do.
        message: String,
    },
}

/// Everything a node needs to run after it is admitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admission {
    /// The node's id.
    pub node_id: String,
    /// Fleet.
    pub fleet_id: String,
    /// Tenant.
    pub tenant: String,
    /// Site.
    pub site: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The node's MIC, PEM.
    pub cert_pem: String,
    /// Anchor intermediates, then tenant CAs (the node's own tenant's first), PEM.
    pub intermediates_pem: Vec<String>,
    /// Fleet root, PEM.
    pub root_pem: String,
    /// Gossip seeds.
    pub seeds: Vec<String>,
    /// API key hashes.
    pub api_keys: Vec<ApiKeyHash>,
    /// Enrollment time.
    pub created_at_ms: u64,
}

/// Hash of an API key as stored.
pub fn api_key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

/// Writes the config file with the addresses given at init/join, so `nexus run` reuses them.
fn write_config(dir: &DataDir, flags: &AddrFlags) -> anyhow::Result<()> {
    let file = crate::config::FileConfig {
        api: flags.api.clone(),
        gossip: flags.gossip.clone(),
        quic: flags.quic.clone(),
        ..Default::default()
    };
    let text = toml::to_string(&file).context("serializing the config file")?;
    datadir::write_public(
        &dir.config(),
        &format!("# Nexus node configuration. Flags and NEXUS_* variables override it.\n{text}"),
    )
}

/// Result of `nexus init`.
pub struct Initialized {
    /// Fleet id.
    pub fleet_id: String,
    /// This anchor's node id.
    pub node_id: NodeId,
    /// The first admin API key (shown once).
    pub admin_key: String,
    /// Where the CA keys are, for the operator.
    pub ca_keys: String,
}

/// Creates a new fleet with this machine as its first anchor, its CA keys where `keys` says.
pub fn init(
    dir: &DataDir,
    site: &str,
    flags: &AddrFlags,
    keys: &CaKeyFlags,
) -> anyhow::Result<Initialized> {
    crate::check_name("site", site)?;
    let plan = cakeys::Plan::from_flags(keys)?;
    dir.create_fresh()?;
    let fleet_id = hex::encode(rand::random::<[u8; 16]>());
    let key = NodeKey::generate();
    let node_id = key.node_id();
    let ca_keys = plan.create(dir, &fleet_id, node_id)?;
    let root = CertificateAuthority::new_fleet_root_with(&fleet_id, ca_keys.root)?;
    let intermediate = root.new_intermediate_with(&fleet_id, node_id, ca_keys.intermediate)?;
    let mic = intermediate.issue_mic(
        &key.public_key(),
        &MicProfile {
            fleet_id: fleet_id.clone(),
            node_id,
            tenant: DEFAULT_TENANT.to_string(),
            site: site.to_string(),
            role: Role::Anchor,
            validity: crate::config::DEFAULT_MIC_LIFETIME,
        },
    )?;
    let admin_key = format!("nxk_{}", URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()));

    // The CA keys are written (or generated in the token) by `plan.create` above.
    cakeys::write(dir, &ca_keys.file)?;
    datadir::write_public(&dir.trust_root(), &root.cert_pem())?;
    datadir::write_public(&dir.ca_cert(), &intermediate.cert_pem())?;
    datadir::write_public(&dir.trust_intermediates(), &intermediate.cert_pem())?;
    datadir::write_secret(&dir.node_key(), &key.to_pkcs8_pem())?;
    datadir::write_public(&dir.node_cert(), &der_to_pem(&mic))?;
    write_config(dir, flags)?;
    let store = Store::open(&dir.db())?;
    store.enroll(
        &Identity {
            fleet_id: fleet_id.clone(),
            node_id: node_id.to_string(),
            role: Role::Anchor.as_str().to_string(),
            site: site.to_string(),
            tenant: DEFAULT_TENANT.to_string(),
            labels: BTreeMap::new(),
            created_at_ms: now_ms(),
        },
        &[],
        &[(
            "admin".to_string(),
            api_key_hash(&admin_key),
            "fleet-admin".to_string(),
        )],
    )?;
    store.record_certificate(
        &Enrollment {
            serial: nexus_ca::read_mic(&mic)?.serial_hex,
            node_id: node_id.to_string(),
            cert_pem: der_to_pem(&mic),
        },
        "anchor",
    )?;
    datadir::write_secret(&dir.admin_key(), &format!("{admin_key}\n"))?;
    Ok(Initialized {
        fleet_id,
        node_id,
        admin_key,
        ca_keys: ca_keys.file.summary(dir),
    })
}

/// Anchor-side state needed to admit nodes.
pub struct Admitter {
    /// This anchor's store.
    pub store: Arc<Store>,
    /// Lifetime of the MICs it issues.
    pub mic_lifetime: Duration,
    /// Joins other anchors admitted with each token (a token's uses count fleet-wide).
    pub remote_uses: crate::peer::RemoteUses,
    /// Fleet id.
    pub fleet_id: String,
    /// Root certificate PEM.
    pub root_pem: String,
    /// Intermediates PEM.
    pub intermediates_pem: Vec<String>,
    /// Current gossip seeds to hand out.
    pub seeds: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// This anchor's tenant CAs (which issue tenants' MICs) and the fleet's (sent along).
    pub tenant_cas: Arc<crate::tenant_ca::TenantCas>,
    /// The replicated configuration: tenants' quotas and the fleet's members.
    pub replication: Arc<crate::replication::Replication>,
    /// Held while a join of a tenant with a node quota is counted and admitted.
    pub quota_lock: std::sync::Mutex<()>,
}

/// A join request that passed the checks needing no state.
struct Parsed {
    request: JoinRequest,
    secret: [u8; 32],
    public_key: [u8; 32],
    node_id: NodeId,
}

/// What the fleet document says about a tenant's node quota.
struct QuotaFacts {
    max_nodes: u64,
    /// Members of the tenant that are neither decommissioned nor removed.
    counted: std::collections::HashSet<String>,
    /// Every member the fleet document records (any tenant, any state).
    recorded: std::collections::HashSet<String>,
}

fn refused(code: &str, message: impl Into<String>) -> JoinResponse {
    JoinResponse::Refused {
        code: code.to_string(),
        message: message.into(),
    }
}

fn refusal_code(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::UnknownToken => "unknown_token",
        Refusal::WrongFleet { .. } => "wrong_fleet",
        Refusal::BadSecret => "bad_secret",
        Refusal::Expired { .. } => "expired",
        Refusal::UsedUp { .. } => "used_up",
        Refusal::Revoked => "revoked",
    }
}

impl Admitter {
    /// Decides one join request. Every refusal is logged and counted.
    pub async fn handle(self: &Arc<Self>, request_bytes: &[u8]) -> JoinResponse {
        let response = self.decide(request_bytes).await;
        let outcome = match &response {
            JoinResponse::Accepted(admission) => {
                tracing::info!(node = %admission.node_id, site = %admission.site, tenant = %admission.tenant, "node admitted");
                "accepted".to_string()
            }
            JoinResponse::Refused { code, message } => {
                tracing::warn!(%code, %message, "join refused");
                code.clone()
            }
        };
        metrics::counter!("nexus_join_requests_total", "outcome" => outcome).increment(1);
        response
    }

    /// The checks that need no state: format, version, secret and CSR.
    fn parse(request_bytes: &[u8]) -> Result<Parsed, JoinResponse> {
        let request: JoinRequest = serde_json::from_slice(request_bytes)
            .map_err(|err| refused("malformed", format!("join request is not valid: {err}")))?;
        if request.v != 1 {
            return Err(refused(
                "unsupported_version",
                format!(
                    "join protocol version {} is not supported (this anchor speaks 1)",
                    request.v
                ),
            ));
        }
        let secret: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&request.secret)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                refused(
                    "malformed",
                    "join token secret is not 32 bytes of base64url",
                )
            })?;
        let public_key = public_key_from_csr(&request.csr_pem).map_err(|err| {
            refused(
                "bad_csr",
                format!("certificate signing request rejected: {err}"),
            )
        })?;
        Ok(Parsed {
            node_id: NodeId::from_public_key(&public_key),
            request,
            secret,
            public_key,
        })
    }

    /// The token checks: known, this fleet's, secret, not revoked, used up or expired.
    fn check_token<'r>(
        &self,
        row: Option<&'r TokenRow>,
        parsed: &Parsed,
        now: u64,
    ) -> Result<&'r TokenRow, JoinResponse> {
        let record = row.map(|row| TokenRecord {
            token_id: row.id.clone(),
            secret_hash: row.secret_hash,
            // Rounded up: the millisecond check below is the one that decides, in step with
            // the `state` the API shows for the token.
            expires_at_unix: row.expires_at_ms.div_ceil(1000) as i64,
            max_uses: row.max_uses,
            uses: row.uses.saturating_add(
                self.remote_uses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&row.id)
                    .copied()
                    .unwrap_or(0),
            ),
            revoked: row.revoked_at_ms.is_some(),
        });
        check_admission(
            record.as_ref(),
            &parsed.request.fleet_id,
            &self.fleet_id,
            &parsed.secret,
            (now / 1000) as i64,
        )
        .map_err(|refusal| refused(refusal_code(&refusal), refusal.to_string()))?;
        let row = row.expect("check_admission refuses unknown tokens");
        if row.expires_at_ms <= now {
            let refusal = Refusal::Expired {
                at_unix: (row.expires_at_ms / 1000) as i64,
            };
            return Err(refused(refusal_code(&refusal), refusal.to_string()));
        }
        Ok(row)
    }

    /// The tenant's node quota and members from the fleet document; `None` without a quota.
    fn quota_facts(&self, tenant: &str) -> Result<Option<QuotaFacts>, JoinResponse> {
        let read = self.replication.read_fleet(|fleet, quarantined| {
            let max_nodes = fleet
                .tenants
                .get(tenant)
                .filter(|_| !quarantined.contains_key(&format!("tenants.{tenant}")))
                .and_then(|t| t.quotas.max_nodes)?;
            let counted = fleet
                .members
                .iter()
                .filter(|(_, m)| {
                    m.tenant == tenant && m.decommissioned_at.is_none() && m.removed_at.is_none()
                })
                .map(|(id, _)| id.clone())
                .collect();
            Some(QuotaFacts {
                max_nodes,
                counted,
                recorded: fleet.members.keys().cloned().collect(),
            })
        });
        match read {
            Ok(facts) => Ok(facts.flatten()),
            Err(err) => Err(refused(
                "internal",
                format!("the anchor could not read the tenant's quota: {err:?}"),
            )),
        }
    }

    /// Refuses the join of `node` when `tenant` is at its node quota. Runs under
    /// [`Admitter::quota_lock`], before the admission transaction.
    fn check_quota(
        &self,
        tenant: &str,
        node: &NodeId,
        mut facts: QuotaFacts,
    ) -> Result<(), JoinResponse> {
        let now = now_ms();
        let rows = self.store.certificates(None).map_err(|err| {
            refused(
                "internal",
                format!("the anchor could not read its certificates: {err}"),
            )
        })?;
        // Nodes this anchor certified that the fleet document does not record yet.
        for row in rows {
            if facts.recorded.contains(&row.node_id)
                || facts.counted.contains(&row.node_id)
                || row.revoked_at_ms.is_some()
                || row.not_after_ms <= now
            {
                continue;
            }
            let of_tenant = pem_to_der(&row.cert_pem)
                .ok()
                .and_then(|ders| ders.into_iter().next())
                .and_then(|der| nexus_ca::read_mic(&der).ok())
                .is_some_and(|mic| mic.tenant == tenant);
            if of_tenant {
                facts.counted.insert(row.node_id);
            }
        }
        let id = node.to_hex();
        let have = facts.counted.len() as u64;
        if facts.counted.contains(&id) || have < facts.max_nodes {
            return Ok(());
        }
        metrics::counter!("nexus_join_quota_refusals_total").increment(1);
        Err(refused(
            "quota_exceeded",
            format!(
                "tenant {tenant} already has {have} node{}, its quota (max_nodes {}): raise \
                 quotas.max_nodes (PATCH /v1/tenants/{tenant}) or decommission a node",
                if have == 1 { "" } else { "s" },
                facts.max_nodes
            ),
        ))
    }

    async fn decide(self: &Arc<Self>, request_bytes: &[u8]) -> JoinResponse {
        let parsed = match Self::parse(request_bytes) {
            Ok(parsed) => parsed,
            Err(refusal) => return refusal,
        };
        // The token first (read, checked again in the transaction below): a refused token
        // costs no CA work and learns nothing about quotas.
        let tenant = {
            let store = self.store.clone();
            let rows = match tokio::task::spawn_blocking(move || store.tokens()).await {
                Ok(Ok(rows)) => rows,
                Ok(Err(err)) => {
                    return refused(
                        "internal",
                        format!("the anchor could not read its tokens: {err}"),
                    );
                }
                Err(err) => return refused("internal", err.to_string()),
            };
            let row = rows.iter().find(|r| r.id == parsed.request.token_id);
            match self.check_token(row, &parsed, now_ms()) {
                Ok(row) => row.tenant.clone(),
                Err(refusal) => return refusal,
            }
        };
        let issuer = match self.tenant_cas.issuer_for(&tenant).await {
            Ok(issuer) => issuer,
            Err(err) => {
                return refused(
                    "issue_failed",
                    format!(
                        "the anchor could not prepare its CA for tenant {tenant}: {err:#}; try \
                         again, or use another anchor"
                    ),
                );
            }
        };
        let quota = match self.quota_facts(&tenant) {
            Ok(quota) => quota,
            Err(refusal) => return refusal,
        };
        // Each admission costs a signature and a synced SQLite write: off the runtime.
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let _counting = quota
                .is_some()
                .then(|| me.quota_lock.lock().unwrap_or_else(|p| p.into_inner()));
            if let Some(facts) = quota
                && let Err(refusal) = me.check_quota(&tenant, &parsed.node_id, facts)
            {
                return refusal;
            }
            me.admit(&parsed, &tenant, &issuer)
        })
        .await
        .unwrap_or_else(|err| refused("internal", format!("the admission failed: {err}")))
    }

    /// The admission transaction: the token checked again, the MIC issued by `issuer`, the use
    /// and the enrollment recorded.
    fn admit(&self, parsed: &Parsed, tenant: &str, issuer: &CertificateAuthority) -> JoinResponse {
        let request = &parsed.request;
        let (public_key, node_id) = (parsed.public_key, parsed.node_id);
        let now = now_ms();
        // Read before the admission transaction: the store serializes access.
        let api_keys = match self.store.api_keys() {
            Ok(keys) => keys
                .into_iter()
                .map(|(id, hash, role)| ApiKeyHash {
                    id,
                    hash: hex::encode(hash),
                    role,
                })
                .collect::<Vec<_>>(),
            Err(err) => {
                return refused(
                    "internal",
                    format!("the anchor could not read its API keys: {err}"),
                );
            }
        };
        let mut intermediates_pem = self.intermediates_pem.clone();
        intermediates_pem.extend(self.tenant_cas.trusted_pems(tenant, MAX_TENANT_CA_BYTES));
        let decided = self.store.admit(&request.token_id, |row: Option<&TokenRow>| {
            let row = self.check_token(row, parsed, now)?;
            if row.tenant != tenant {
                return Err(refused(
                    "internal",
                    format!("the token's tenant changed from {tenant} to {} while it was being used: try again", row.tenant),
                ));
            }
            let site = match (&row.site, &request.site) {
                (Some(fixed), Some(asked)) if fixed != asked => {
                    return Err(refused(
                        "site_conflict",
                        format!("this token admits nodes to site {fixed:?}, but the node asked for site {asked:?}: drop --site or use a token for that site"),
                    ));
                }
                (Some(fixed), _) => fixed.clone(),
                (None, Some(asked)) => asked.clone(),
                (None, None) => DEFAULT_SITE.to_string(),
            };
            if let Err(err) = crate::check_name("site", &site) {
                return Err(refused("malformed", err.to_string()));
            }
            if request.labels.len() > MAX_LABELS {
                return Err(refused(
                    "malformed",
                    format!("a node may have at most {MAX_LABELS} labels, the request has {}", request.labels.len()),
                ));
            }
            for (key, value) in &request.labels {
                crate::client::check_label(key, value).map_err(|err| refused("malformed", err))?;
            }
            let mut labels = request.labels.clone();
            labels.extend(row.labels.clone());
            let cert = issuer
                .issue_mic(
                    &public_key,
                    &MicProfile {
                        fleet_id: self.fleet_id.clone(),
                        node_id,
                        tenant: row.tenant.clone(),
                        site: site.clone(),
                        role: Role::Node,
                        validity: self.mic_lifetime,
                    },
                )
                .map_err(|err| refused("issue_failed", format!("the anchor could not issue a certificate: {err}")))?;
            let serial = nexus_ca::read_mic(&cert)
                .map(|mic| mic.serial_hex)
                .map_err(|err| refused("issue_failed", err.to_string()))?;
            let cert_pem = der_to_pem(&cert);
            let admission = Admission {
                node_id: node_id.to_string(),
                fleet_id: self.fleet_id.clone(),
                tenant: row.tenant.clone(),
                site,
                labels,
                cert_pem: cert_pem.clone(),
                intermediates_pem,
                root_pem: self.root_pem.clone(),
                seeds: (self.seeds)(),
                api_keys,
                created_at_ms: now,
            };
            Ok((
                admission,
                Enrollment {
                    serial,
                    node_id: node_id.to_string(),
                    cert_pem,
                },
            ))
        });
        match decided {
            Ok(Ok(admission)) => JoinResponse::Accepted(Box::new(admission)),
            Ok(Err(refusal)) => refusal,
            Err(err) => refused(
                "internal",
                format!("the anchor could not record the join: {err}"),
            ),
        }
    }
}

/// Serves join requests on `endpoint` until it is closed.
pub async fn serve_joins(
    endpoint: quinn::Endpoint,
    admitter: Option<Arc<Admitter>>,
    peer: Arc<crate::peer::PeerService>,
) {
    // Bounds the admissions decided at once: each costs a signature and a synced SQLite write.
    // Taken only once a request has arrived, so half-open connections cannot hold it.
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    while let Some(incoming) = endpoint.accept().await {
        // A stateless retry proves the source address before anything is kept for it, so forged
        // sources cannot fill the join service.
        if !incoming.remote_address_validated() {
            if let Err(err) = incoming.retry() {
                tracing::debug!(error = %err, "cannot send a QUIC retry");
            }
            continue;
        }
        let (admitter, permits, peer) = (admitter.clone(), permits.clone(), peer.clone());
        tokio::spawn(async move {
            if let Err(err) = serve_one(incoming, admitter, permits, peer).await {
                tracing::debug!(error = %format!("{err:#}"), "join connection failed");
            }
        });
    }
}

async fn serve_one(
    incoming: quinn::Incoming,
    admitter: Option<Arc<Admitter>>,
    permits: Arc<tokio::sync::Semaphore>,
    peer: Arc<crate::peer::PeerService>,
) -> anyhow::Result<()> {
    // One deadline for handshake, request and answer together.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let connection = match tokio::time::timeout_at(deadline, incoming).await? {
        Ok(connection) => connection,
        Err(err) => {
            metrics::counter!("nexus_quic_handshakes_failed_total").increment(1);
            return Err(err.into());
        }
    };
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    if alpn.as_deref() == Some(crate::peer::ALPN_PEER) {
        peer.serve(connection).await;
        return Ok(());
    }
    let (mut send, mut recv) = tokio::time::timeout_at(deadline, connection.accept_bi()).await??;
    let request = tokio::time::timeout_at(deadline, recv.read_to_end(MAX_REQUEST)).await??;
    let response = match (&admitter, permits.try_acquire_owned()) {
        (None, _) => refused(
            "not_an_anchor",
            "this node is not an anchor and cannot admit nodes: use the anchor addresses in the token",
        ),
        (Some(_), Err(_)) => {
            metrics::counter!("nexus_join_requests_total", "outcome" => "busy").increment(1);
            refused(
                "busy",
                "the anchor is admitting many nodes at once: try again in a few seconds",
            )
        }
        (Some(admitter), Ok(permit)) => {
            let _permit = permit;
            admitter.handle(&request).await
        }
    };
    let bytes = serde_json::to_vec(&response)?;
    tokio::time::timeout_at(deadline, send.write_all(&bytes)).await??;
    send.finish()?;
    // Let the client read the answer and close first.
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
    Ok(())
}

/// Dials the anchors of `token` (or `anchors_override`) until one answers.
pub async fn request_admission(
    token: &JoinToken,
    anchors_override: &[SocketAddr],
    key: &NodeKey,
    site: Option<String>,
    labels: BTreeMap<String, String>,
) -> anyhow::Result<Admission> {
    let request = JoinRequest {
        v: 1,
        fleet_id: token.fleet_id.clone(),
        token_id: token.token_id.clone(),
        secret: URL_SAFE_NO_PAD.encode(token.secret),
        csr_pem: key.csr_pem()?,
        site,
        labels,
    };
    let body = serde_json::to_vec(&request)?;
    let anchors = if anchors_override.is_empty() {
        token.anchors.clone()
    } else {
        anchors_override.to_vec()
    };
    let tls =
        nexus_ca::join_client_tls_config(token.root_fingerprint, &token.fleet_id, &[ALPN_JOIN]);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("building the QUIC client configuration")?;
    let client_config = quinn::ClientConfig::new(Arc::new(quic));
    let mut unreachable = Vec::new();
    let mut untrusted = Vec::new();
    for anchor in &anchors {
        match ask_anchor(*anchor, client_config.clone(), &body).await {
            Ok(JoinResponse::Accepted(admission)) => return Ok(*admission),
            Ok(JoinResponse::Refused { code, message }) => {
                // A refusal is the anchor's decision about the token: asking another anchor
                // would not change it.
                bail!("the anchor at {anchor} refused to admit this node ({code}): {message}");
            }
            Err(AnchorError::Untrusted(why)) => untrusted.push(format!("{anchor}: {why}")),
            Err(AnchorError::Unreachable(why)) => unreachable.push(format!("{anchor}: {why}")),
        }
    }
    if !untrusted.is_empty() {
        bail!(
            "refusing to join: no anchor proved it belongs to the token's fleet (nothing was sent):\n  {}{}",
            untrusted.join("\n  "),
            if unreachable.is_empty() {
                String::new()
            } else {
                format!("\nunreachable:\n  {}", unreachable.join("\n  "))
            }
        );
    }
    bail!(
        "no anchor could be reached to join the fleet:\n  {}\ncheck that an anchor is running and reachable, or pass --anchor IP:PORT",
        unreachable.join("\n  ")
    )
}

/// Why an anchor could not be asked.
enum AnchorError {
    /// Its certificate does not chain to the token's root (or is not an anchor's).
    Untrusted(String),
    /// No QUIC answer, or the exchange broke.
    Unreachable(String),
}

async fn ask_anchor(
    anchor: SocketAddr,
    config: quinn::ClientConfig,
    body: &[u8],
) -> Result<JoinResponse, AnchorError> {
    let bind: SocketAddr = if anchor.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|err| {
        AnchorError::Unreachable(format!("cannot bind a UDP socket for QUIC: {err}"))
    })?;
    endpoint.set_default_client_config(config);
    let exchange = async {
        let connection = endpoint
            .connect(anchor, nexus_ca::ANCHOR_SERVER_NAME)
            .map_err(|err| AnchorError::Unreachable(err.to_string()))?
            .await
            .map_err(describe_connection_error)?;
        let unreachable = |err: &dyn std::fmt::Display| AnchorError::Unreachable(err.to_string());
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| unreachable(&e))?;
        send.write_all(body).await.map_err(|e| unreachable(&e))?;
        send.finish().map_err(|e| unreachable(&e))?;
        let bytes = recv
            .read_to_end(MAX_RESPONSE)
            .await
            .map_err(|e| unreachable(&e))?;
        connection.close(0u32.into(), b"done");
        serde_json::from_slice::<JoinResponse>(&bytes).map_err(|err| {
            AnchorError::Unreachable(format!("the anchor's answer is not a join response: {err}"))
        })
    };
    let result = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| {
            Err(AnchorError::Unreachable(
                "no answer within 10 s".to_string(),
            ))
        });
    endpoint.wait_idle().await;
    result
}

fn describe_connection_error(err: quinn::ConnectionError) -> AnchorError {
    match err {
        // Our certificate verifier failed the handshake: the anchor is not who the token says.
        // TLS alerts travel as QUIC crypto errors, codes 0x100..=0x1ff.
        quinn::ConnectionError::TransportError(transport)
            if (0x100..=0x1ff).contains(&u64::from(transport.code)) =>
        {
            AnchorError::Untrusted(
                transport
                    .reason
                    .trim_start_matches("unexpected error: ")
                    .to_string(),
            )
        }
        quinn::ConnectionError::TimedOut => {
            AnchorError::Unreachable("no QUIC answer (timed out)".to_string())
        }
        other => AnchorError::Unreachable(other.to_string()),
    }
}

/// Persists an admission into a fresh data directory.
pub fn persist_admission(
    dir: &DataDir,
    key: &NodeKey,
    admission: &Admission,
    flags: &AddrFlags,
) -> anyhow::Result<()> {
    // Check what the anchor sent before writing anything.
    let cert = pem_to_der(&admission.cert_pem)?
        .into_iter()
        .next()
        .context("the anchor sent no certificate")?;
    let mic = nexus_ca::read_mic(&cert)?;
    if mic.public_key != key.public_key() {
        bail!("the anchor issued a certificate for another key; refusing it");
    }
    datadir::write_secret(&dir.node_key(), &key.to_pkcs8_pem())?;
    datadir::write_public(&dir.node_cert(), &admission.cert_pem)?;
    datadir::write_public(&dir.trust_root(), &admission.root_pem)?;
    // Anchor CAs and tenant CAs are kept apart (see `tenant_ca.rs`); `nexus run` checks both
    // against the root before it uses them.
    let (mut anchors, mut tenants) = (String::new(), String::new());
    for pem in &admission.intermediates_pem {
        for der in pem_to_der(pem)? {
            if crate::tenant_ca::is_tenant_ca(&der) {
                tenants.push_str(&der_to_pem(&der));
            } else {
                anchors.push_str(&der_to_pem(&der));
            }
        }
    }
    datadir::write_public(&dir.trust_intermediates(), &anchors)?;
    if !tenants.is_empty() {
        datadir::write_public(&crate::tenant_ca::trusted_file(dir), &tenants)?;
    }
    write_config(dir, flags)?;
    let api_keys = admission
        .api_keys
        .iter()
        .filter_map(|k| {
            let hash: [u8; 32] = hex::decode(&k.hash).ok()?.try_into().ok()?;
            Some((k.id.clone(), hash, k.role.clone()))
        })
        .collect::<Vec<_>>();
    let store = Store::open(&dir.db())?;
    store.enroll(
        &Identity {
            fleet_id: admission.fleet_id.clone(),
            node_id: admission.node_id.clone(),
            role: Role::Node.as_str().to_string(),
            site: admission.site.clone(),
            tenant: admission.tenant.clone(),
            labels: admission.labels.clone(),
            created_at_ms: admission.created_at_ms,
        },
        &admission.seeds,
        &api_keys,
    )?;
    Ok(())
}

/// Creates a join token on this anchor.
pub fn create_token(
    store: &Store,
    fleet_id: &str,
    anchors: Vec<SocketAddr>,
    root_fingerprint: [u8; 32],
    row: TokenRow,
) -> Result<(JoinToken, TokenRow), crate::store::StoreError> {
    let token = JoinToken::new(fleet_id, anchors, root_fingerprint);
    let row = TokenRow {
        id: token.token_id.clone(),
        secret_hash: token.secret_hash(),
        ..row
    };
    store.insert_token(&row)?;
    Ok((token, row))
}
