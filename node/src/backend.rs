//! What this node's API serves: the local membership view, operator actions published through
//! gossip, and (on anchors) join tokens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use nexus_api::config::{ConfigKind, ConfigObject, ConfigPage};
use nexus_api::wire::{
    Addresses, Anchor, Caller, CreateToken, CreatedToken, CsrRequest, Health, IssuedMic, Mic, Node,
    Revoked, Token,
};
use nexus_api::{ApiError, Backend};
use nexus_ca::{NodeId, Role};
use nexus_mesh::{Member, Mesh, NodeStatus, OperatorAction};

use crate::agent::Loaded;
use crate::peer::PeerService;
use crate::store::{CertificateRow, Enrollment, Store, TokenRow};
use crate::transparency::{Transparency, TransparencyError};
use crate::{now_ms, rfc3339_ms};

const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_USES: u32 = 10_000;

/// The API backend of one node.
pub struct NodeBackend {
    mesh: Arc<Mesh>,
    store: Arc<Store>,
    node_id: NodeId,
    fleet_id: String,
    role: Role,
    root_fingerprint: [u8; 32],
    quic_addr: SocketAddr,
    access: Arc<crate::access::Access>,
    bootstrap_keys: Vec<([u8; 32], String)>,
    audit: Option<Arc<crate::audit::AuditLog>>,
    metrics: PrometheusHandle,
    health: Arc<Mutex<BTreeMap<String, String>>>,
    peer: Arc<PeerService>,
    /// The transparency log, on anchors.
    transparency: Option<Arc<Transparency>>,
    replication: Option<Arc<crate::replication::Replication>>,
    /// The event journal `GET /v1/watch` streams.
    events: Option<Arc<dyn nexus_api::watch::EventSource>>,
    /// Fleet duties (anchors).
    duties: Option<Arc<crate::duties::Duties>>,
    /// This anchor's CAs per tenant.
    tenant_cas: Option<Arc<crate::tenant_ca::TenantCas>>,
    /// Usage metering and (anchors) the roll-up.
    usage: Option<Arc<crate::usage::Usage>>,
}

impl NodeBackend {
    /// Builds the backend; loads API key hashes from the store.
    pub fn new(
        mesh: Arc<Mesh>,
        store: Arc<Store>,
        loaded: &Loaded,
        metrics: PrometheusHandle,
        health: Arc<Mutex<BTreeMap<String, String>>>,
        quic_addr: SocketAddr,
        peer: Arc<PeerService>,
    ) -> anyhow::Result<NodeBackend> {
        let bootstrap_keys: Vec<([u8; 32], String)> = store
            .api_keys()?
            .into_iter()
            .map(|(id, hash, _)| (hash, id))
            .collect();
        Ok(NodeBackend {
            mesh,
            store,
            node_id: loaded.key.node_id(),
            fleet_id: loaded.identity.fleet_id.clone(),
            role: loaded.role,
            root_fingerprint: loaded.trust.root_fingerprint(),
            quic_addr,
            access: Arc::new(crate::access::Access::new(None, bootstrap_keys.clone())),
            bootstrap_keys,
            audit: None,
            metrics,
            health,
            peer,
            transparency: None,
            replication: None,
            events: None,
            duties: None,
            tenant_cas: None,
            usage: None,
        })
    }

    /// Creates tenant CAs with `tenant_cas` when a tenant is onboarded.
    pub fn with_tenant_cas(mut self, tenant_cas: Arc<crate::tenant_ca::TenantCas>) -> NodeBackend {
        self.tenant_cas = Some(tenant_cas);
        self
    }

    /// Reports `duties` on `GET /v1/fleet/duties`.
    pub fn with_duties(mut self, duties: Arc<crate::duties::Duties>) -> NodeBackend {
        self.duties = Some(duties);
        self
    }

    /// Meters API calls into `usage` and serves `GET /v1/tenants/{id}/usage` from it.
    pub fn with_usage(mut self, usage: Arc<crate::usage::Usage>) -> NodeBackend {
        self.usage = Some(usage);
        self
    }

    /// Serves `transparency` (an anchor's log) on `/v1/transparency`.
    pub fn with_transparency(mut self, transparency: Option<Arc<Transparency>>) -> NodeBackend {
        self.transparency = transparency;
        self
    }

    /// Serves `GET /v1/watch` from `events`.
    pub fn with_events(mut self, events: Arc<dyn nexus_api::watch::EventSource>) -> NodeBackend {
        self.events = Some(events);
        self
    }

    /// Serves routes from (and writes them to) the replicated configuration.
    pub fn with_replication(
        mut self,
        replication: Arc<crate::replication::Replication>,
    ) -> NodeBackend {
        self.access = Arc::new(crate::access::Access::new(
            Some(replication.clone()),
            self.bootstrap_keys.clone(),
        ));
        self.replication = Some(replication);
        self
    }

    /// Records every API call in `audit`.
    pub fn with_audit(mut self, audit: Arc<crate::audit::AuditLog>) -> NodeBackend {
        self.audit = Some(audit);
        self
    }

    fn replication(&self) -> Result<Arc<crate::replication::Replication>, ApiError> {
        self.replication
            .clone()
            .ok_or_else(|| ApiError::internal("the replicated configuration is not loaded"))
    }

    /// Runs `f` on the transparency log off the async runtime (it reads SQLite and hashes).
    async fn transparency<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transparency) -> Result<T, TransparencyError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let Some(log) = self.transparency.clone() else {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "not_an_anchor",
                format!(
                    "each anchor keeps the transparency log of the certificates it issues, and                      this node is not an anchor: ask an anchor ({})",
                    self.anchor_apis()
                ),
            ));
        };
        tokio::task::spawn_blocking(move || f(&log))
            .await
            .map_err(|err| ApiError::internal(err.to_string()))?
            .map_err(ApiError::from)
    }

    fn anchor(&self) -> Result<Arc<crate::peer::AnchorCa>, ApiError> {
        self.peer.anchor.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "not_an_anchor",
                format!(
                    "certificates are issued and revoked by anchors and this node is not one: send \
                     the request to an anchor ({})",
                    self.anchor_apis()
                ),
            )
        })
    }

    fn anchor_apis(&self) -> String {
        let anchors: Vec<String> = self
            .mesh
            .members()
            .into_iter()
            .filter_map(|m| m.info)
            .filter(|i| i.role == Role::Anchor)
            .map(|i| format!("https://{}", i.api_addr))
            .collect();
        if anchors.is_empty() {
            "none known yet".to_string()
        } else {
            anchors.join(", ")
        }
    }

    fn wire(&self, member: &Member) -> Node {
        let id = member.node_id.to_hex();
        let labels = self
            .replication
            .as_ref()
            .and_then(|r| r.node_labels().remove(&id));
        let offline = self.replication.as_ref().and_then(|r| r.offline_since(&id));
        self.wire_with(member, labels, offline)
    }

    /// [`NodeBackend::wire`] with the operator labels and the offline flag already read (lists
    /// read them once).
    fn wire_with(
        &self,
        member: &Member,
        labels: Option<BTreeMap<String, String>>,
        offline_since: Option<i64>,
    ) -> Node {
        let mut node = to_wire(member);
        node.labels.extend(labels.unwrap_or_default());
        node.certificate_revoked = node
            .certificate_serial
            .as_deref()
            .is_some_and(|s| self.peer.fleet.revocations().is_revoked(s));
        node.offline_since = offline_since.map(|ms| rfc3339_ms(ms.max(0) as u64));
        node
    }

    fn require_anchor(&self) -> Result<(), ApiError> {
        if self.role == Role::Anchor {
            return Ok(());
        }
        let anchors: Vec<String> = self
            .mesh
            .members()
            .into_iter()
            .filter_map(|m| m.info)
            .filter(|i| i.role == Role::Anchor)
            .map(|i| format!("https://{}", i.api_addr))
            .collect();
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_an_anchor",
            format!(
                "join tokens are kept by anchors and this node is not one: send the request to an anchor ({})",
                if anchors.is_empty() {
                    "none known yet".to_string()
                } else {
                    anchors.join(", ")
                }
            ),
        ))
    }

    fn parse_id(id: &str) -> Result<NodeId, ApiError> {
        id.parse::<NodeId>()
            .map_err(|err| ApiError::bad_request(err.to_string()))
    }

    async fn act(&self, id: &str, action: OperatorAction) -> Result<Node, ApiError> {
        let target = Self::parse_id(id)?;
        let member = self
            .mesh
            .member(&target)
            .ok_or_else(|| ApiError::not_found(format!("node {id} is not known to this node")))?;
        if member.status == NodeStatus::Decommissioned {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "decommissioned",
                format!("node {id} is decommissioned; that is final"),
            ));
        }
        if action == OperatorAction::Decommission {
            // On disk before it is announced: a decommission is final, so an operator who sees
            // an error must be able to trust that nothing happened.
            let id = id.to_string();
            self.blocking(move |store| store.deny(&id, "decommissioned"))
                .await?;
        }
        self.mesh.operator_action(target, action).await;
        // Re-derive now so the answer shows the new status.
        let member = self.mesh.member(&target).unwrap_or(member);
        let mut node = self.wire(&member);
        node.status = match action {
            OperatorAction::Drain if member.status != NodeStatus::Offline => "draining".into(),
            OperatorAction::Decommission => "decommissioned".into(),
            _ => node.status,
        };
        Ok(node)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|err| ApiError::internal(err.to_string()))?
            .map_err(|err| ApiError::internal(err.to_string()))
    }
}

/// Maps the membership view to the API's node.
pub fn to_wire(member: &Member) -> Node {
    let info = member.info.as_ref();
    Node {
        node_id: member.node_id.to_string(),
        hostname: info.map(|i| i.hostname.clone()).unwrap_or_default(),
        role: info.map_or("node", |i| i.role.as_str()).to_string(),
        site: info.map(|i| i.site.clone()).unwrap_or_default(),
        tenant_id: info.map(|i| i.tenant.clone()).unwrap_or_default(),
        labels: info.map(|i| i.labels.clone()).unwrap_or_default(),
        addresses: Addresses {
            api: info.map(|i| i.api_addr.to_string()),
            gossip: member.gossip_addr.map(|a| a.to_string()),
            quic: info.map(|i| i.quic_addr.to_string()),
        },
        status: member.status.as_str().to_string(),
        health: member.health.clone(),
        nexlink_version: info.map(|i| i.nexlink_version.clone()).unwrap_or_default(),
        nexroute_version: info.map(|i| i.nexroute_version.clone()).unwrap_or_default(),
        nic_model: info.map(|i| i.nic_model.clone()).unwrap_or_default(),
        nic_backend: info.map(|i| i.nic_backend.clone()).unwrap_or_default(),
        dataplane: member
            .dataplane
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok()),
        firmware_version: info.map(|i| i.firmware_version.clone()).unwrap_or_default(),
        capabilities: info.map(|i| i.capabilities.clone()).unwrap_or_default(),
        trust_level: info.map_or(0, |i| i.trust_level),
        config_version: info.map_or(0, |i| i.config_version),
        last_heartbeat: member.last_heartbeat_ms.map(rfc3339_ms),
        created_at: info.map(|i| rfc3339_ms(i.created_at_ms)),
        updated_at: rfc3339_ms(member.status_since_ms),
        generation: member.generation,
        certificate_serial: info.map(|i| i.mic_serial.clone()).filter(|s| !s.is_empty()),
        certificate_expires_at: info
            .map(|i| i.mic_not_after_ms)
            .filter(|ms| *ms > 0)
            .map(rfc3339_ms),
        certificate_revoked: false,
        offline_since: None,
    }
}

fn anchor_to_wire(node_id: &str, state: &str, member: Option<&Member>) -> Anchor {
    let info = member.and_then(|m| m.info.as_ref());
    Anchor {
        node_id: node_id.to_string(),
        state: state.to_string(),
        status: member.map(|m| m.status.as_str().to_string()),
        api: info.map(|i| i.api_addr.to_string()),
        quic: info.map(|i| i.quic_addr.to_string()),
    }
}

/// The node's name for an API collection.
fn node_kind(kind: &ConfigKind) -> crate::replication::Kind {
    use crate::replication::Kind;
    match kind {
        ConfigKind::Routes => Kind::Route,
        ConfigKind::SiteRoutes(site) => Kind::SiteRoute(site.clone()),
        ConfigKind::FirmwareTargets => Kind::FirmwareTarget,
        ConfigKind::Tenants => Kind::Tenant,
        ConfigKind::FleetPolicies => Kind::FleetPolicy,
    }
}

/// The role a change records for an API caller (and every receiver checks: a tenant's
/// caller writes only its tenant's document, a viewer nothing).
fn crdt_caller(caller: &Caller) -> Result<nexus_crdt::Caller, ApiError> {
    use nexus_crdt::CallerRole;
    let tenant = || caller.tenant.clone().unwrap_or_default();
    let role = match caller.role.as_str() {
        "fleet-admin" => CallerRole::FleetAdmin,
        "admin" => CallerRole::TenantAdmin { tenant: tenant() },
        "operator" => CallerRole::TenantOperator { tenant: tenant() },
        "viewer" => CallerRole::TenantViewer { tenant: tenant() },
        other => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("a {other} caller may not change configuration"),
            ));
        }
    };
    Ok(nexus_crdt::Caller {
        identity: caller.identity.clone(),
        role,
    })
}

/// How a refused configuration write reads in the API.
pub(crate) fn write_error(err: crate::replication::WriteError) -> ApiError {
    use crate::replication::WriteError;
    match err {
        WriteError::Invalid(problems) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            problems.join("; "),
        ),
        WriteError::NotHere(message) => {
            ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_here", message)
        }
        WriteError::NotFound(message) => ApiError::not_found(message),
        WriteError::Malformed(message) => ApiError::bad_request(message),
        WriteError::NotReady(message) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_synced", message)
        }
        WriteError::Internal(message) => ApiError::internal(message),
    }
}

fn mic_to_wire(row: &CertificateRow) -> Mic {
    Mic {
        serial: row.serial.clone(),
        node_id: row.node_id.clone(),
        kind: row.kind.clone(),
        issued_at: rfc3339_ms(row.issued_at_ms),
        expires_at: rfc3339_ms(row.not_after_ms),
        revoked_at: row.revoked_at_ms.map(rfc3339_ms),
        revoke_reason: row.revoke_reason.clone(),
        certificate_pem: row.cert_pem.clone(),
    }
}

fn token_state(row: &TokenRow, now: u64) -> &'static str {
    if row.revoked_at_ms.is_some() {
        "revoked"
    } else if row.uses >= row.max_uses {
        "used"
    } else if row.expires_at_ms <= now {
        "expired"
    } else {
        "active"
    }
}

fn token_to_wire(row: &TokenRow) -> Token {
    Token {
        id: row.id.clone(),
        tenant: row.tenant.clone(),
        site: row.site.clone(),
        labels: row.labels.clone(),
        max_uses: row.max_uses,
        uses: row.uses,
        expires_at: rfc3339_ms(row.expires_at_ms),
        created_at: rfc3339_ms(row.created_at_ms),
        state: token_state(row, now_ms()).to_string(),
    }
}

/// Validates a token request; the error names the field.
fn validate_token_request(request: &CreateToken) -> Result<(Duration, u32), ApiError> {
    let ttl = Duration::from_secs(request.ttl_seconds.unwrap_or(3600));
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be between {} and {}, got {}",
            MIN_TTL.as_secs(),
            MAX_TTL.as_secs(),
            ttl.as_secs()
        )));
    }
    let uses = request.uses.unwrap_or(1);
    if uses == 0 || uses > MAX_USES {
        return Err(ApiError::bad_request(format!(
            "uses must be between 1 and {MAX_USES}, got {uses}"
        )));
    }
    for (field, value) in [("tenant", &request.tenant), ("site", &request.site)] {
        if let Some(value) = value
            && let Err(err) = nexus_ca::validate_name(
                if field == "tenant" { "tenant" } else { "site" },
                value,
                false,
            )
        {
            return Err(ApiError::bad_request(format!("{field}: {err}")));
        }
    }
    for (key, value) in &request.labels {
        crate::client::check_label(key, value)
            .map_err(|err| ApiError::bad_request(format!("labels: {err}")))?;
    }
    Ok((ttl, uses))
}

#[async_trait]
impl Backend for NodeBackend {
    fn authenticate_key(&self, api_key: &str) -> Option<Caller> {
        self.access.authenticate_key(api_key)
    }

    async fn authenticate_jwt(&self, token: &str) -> Result<Caller, String> {
        self.access.authenticate_jwt(token).await
    }

    fn api_quota(&self, tenant: &str) -> Option<(u64, u64)> {
        self.access.quota(tenant)
    }

    fn record_audit(&self, entry: nexus_api::wire::AuditEntry) {
        if let Some(audit) = &self.audit {
            audit.record(entry);
        }
    }

    async fn audit(
        &self,
        query: nexus_api::wire::AuditQuery,
    ) -> Result<(Vec<nexus_api::wire::AuditEntry>, bool), ApiError> {
        let Some(audit) = self.audit.clone() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_audit_log",
                "this node keeps no audit log",
            ));
        };
        tokio::task::spawn_blocking(move || audit.query(&query))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("{e:#}")))
    }

    async fn create_key(
        &self,
        caller: &Caller,
        request: nexus_api::wire::CreateKey,
    ) -> Result<nexus_api::wire::CreatedKey, ApiError> {
        self.access.create_key(&crdt_caller(caller)?, request).await
    }

    async fn keys(&self, tenant: Option<String>) -> Result<Vec<nexus_api::wire::ApiKey>, ApiError> {
        self.access.keys(tenant)
    }

    async fn revoke_key(
        &self,
        caller: &Caller,
        tenant: Option<String>,
        id: &str,
    ) -> Result<nexus_api::wire::ApiKey, ApiError> {
        self.access
            .revoke_key(&crdt_caller(caller)?, tenant, id)
            .await
    }

    async fn oidc(&self, tenant: &str) -> Result<Option<serde_json::Value>, ApiError> {
        self.access.oidc(tenant)
    }

    async fn put_oidc(
        &self,
        caller: &Caller,
        tenant: &str,
        provider: Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, ApiError> {
        self.access
            .put_oidc(&crdt_caller(caller)?, tenant, provider)
            .await
    }

    async fn check_oidc(&self, tenant: &str, provider: &serde_json::Value) -> Result<(), ApiError> {
        self.access.check_oidc(tenant, provider.clone()).map(|_| ())
    }

    async fn ensure_tenant_ca(&self, tenant: &str) -> Result<Option<String>, ApiError> {
        let Some(cas) = &self.tenant_cas else {
            return Ok(None);
        };
        if self.role != Role::Anchor {
            return Ok(None);
        }
        let ca = cas
            .ensure_tenant_ca(tenant)
            .await
            .map_err(|e| ApiError::internal(format!("creating the tenant CA: {e:#}")))?;
        Ok(ca.map(|ca| ca.cert_pem()))
    }

    fn check_key_ttl(&self, ttl: &str) -> Result<(), ApiError> {
        crate::access::key_ttl(ttl).map(|_| ())
    }

    fn duties(&self) -> Vec<nexus_api::tenants::Duty> {
        self.duties.as_ref().map(|d| d.status()).unwrap_or_default()
    }

    fn nodes(&self) -> Vec<Node> {
        let mut labels = self
            .replication
            .as_ref()
            .map(|r| r.node_labels())
            .unwrap_or_default();
        let mut offline = self
            .replication
            .as_ref()
            .map(|r| r.offline_flags())
            .unwrap_or_default();
        self.mesh
            .members()
            .iter()
            .map(|m| {
                let id = m.node_id.to_hex();
                self.wire_with(m, labels.remove(&id), offline.remove(&id))
            })
            .collect()
    }

    async fn set_labels(
        &self,
        caller: &Caller,
        node_id: &str,
        labels: BTreeMap<String, Option<String>>,
    ) -> Result<Node, ApiError> {
        let replication = self.replication()?;
        let id = NodeBackend::parse_id(node_id)?;
        let member = self.mesh.member(&id).ok_or_else(|| {
            ApiError::not_found(format!("node {node_id} is not known to this node"))
        })?;
        let tenant = to_wire(&member).tenant_id;
        for (key, value) in &labels {
            if let Some(problem) =
                nexus_crdt::validate::label_problem(key, value.as_deref().unwrap_or_default())
            {
                return Err(ApiError::bad_request(format!("labels.{key}: {problem}")));
            }
        }
        let doc = nexus_crdt::DocId::tenant(&tenant)
            .map_err(|e| ApiError::internal(format!("the node's tenant: {e}")))?;
        let mut record = replication
            .node_override(&tenant, &id)
            .map_err(write_error)?
            .unwrap_or_default();
        for (key, value) in labels {
            match value {
                Some(v) => record.labels.insert(key, v),
                None => record.labels.remove(&key),
            };
        }
        replication
            .put_record(
                &crdt_caller(caller)?,
                &doc,
                nexus_crdt::NODE_OVERRIDES,
                &id.to_hex(),
                Some(record),
            )
            .await
            .map_err(write_error)?;
        Ok(self.wire(&member))
    }

    fn node(&self, node_id: &str) -> Option<Node> {
        let id = node_id.parse::<NodeId>().ok()?;
        self.mesh.member(&id).as_ref().map(|m| self.wire(m))
    }

    fn authenticate_certificate(&self, chain: &[Vec<u8>]) -> Result<Caller, String> {
        let chain: Vec<rustls::pki_types::CertificateDer<'_>> = chain
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.as_slice()))
            .collect();
        let mic = nexus_ca::peer_identity(&self.peer.fleet, &chain, (now_ms() / 1000) as i64)
            .map_err(|e| e.to_string())?;
        Ok(Caller {
            identity: format!("node:{}", mic.node_id),
            role: "node".to_string(),
            tenant: Some(mic.tenant),
        })
    }

    async fn issue_mic(&self, request: CsrRequest) -> Result<IssuedMic, ApiError> {
        let anchor = self.anchor()?;
        let bad = |field: &str, err: String| {
            metrics::counter!("nexus_mic_issuance_refused_total", "reason" => "invalid")
                .increment(1);
            ApiError::bad_request(format!("{field}: {err}"))
        };
        let public_key = nexus_ca::public_key_from_csr(&request.csr_pem)
            .map_err(|e| bad("csr_pem", e.to_string()))?;
        let node_id = NodeId::from_public_key(&public_key);
        let asked = nexus_ca::csr_common_name(&request.csr_pem)
            .map_err(|e| bad("csr_pem", e.to_string()))?;
        if let Some(cn) = asked
            && cn != node_id.to_string()
        {
            metrics::counter!("nexus_mic_issuance_refused_total", "reason" => "identity")
                .increment(1);
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "identity_mismatch",
                format!(
                    "csr_pem asks for node {cn:?}, but its key is node {node_id}: a node id is \
                     derived from the key, so a CSR may only name its own"
                ),
            ));
        }
        let tenant = request
            .tenant
            .unwrap_or_else(|| crate::DEFAULT_TENANT.to_string());
        nexus_ca::validate_name("tenant", &tenant, false)
            .map_err(|e| bad("tenant", e.to_string()))?;
        let site = request
            .site
            .unwrap_or_else(|| crate::DEFAULT_SITE.to_string());
        nexus_ca::validate_name("site", &site, false).map_err(|e| bad("site", e.to_string()))?;
        let role: Role = request
            .role
            .as_deref()
            .unwrap_or("node")
            .parse()
            .map_err(|e: nexus_ca::CaError| bad("role", e.to_string()))?;
        let id = node_id.to_string();
        if self.blocking(move |s| s.denied()).await?.contains(&id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "decommissioned",
                format!(
                    "node {node_id} was decommissioned and cannot be certified again; generate a new key"
                ),
            ));
        }
        let profile = nexus_ca::MicProfile {
            fleet_id: self.fleet_id.clone(),
            node_id,
            tenant,
            site,
            role,
            validity: anchor.mic_lifetime,
        };
        let ca = anchor.ca.clone();
        let issued =
            tokio::task::spawn_blocking(move || -> Result<Enrollment, nexus_ca::CaError> {
                let der = ca.issue_mic(&public_key, &profile)?;
                Ok(Enrollment {
                    serial: nexus_ca::read_mic(&der)?.serial_hex,
                    node_id: profile.node_id.to_string(),
                    cert_pem: nexus_ca::der_to_pem(&der),
                })
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| {
                ApiError::internal(format!("the anchor could not issue the certificate: {e}"))
            })?;
        let row = self
            .blocking(move |store| {
                store.record_certificate(&issued, "csr")?;
                store.certificate(&issued.serial)
            })
            .await?
            .ok_or_else(|| ApiError::internal("the certificate just issued is not in the store"))?;
        metrics::counter!("nexus_mic_issued_total", "kind" => "csr").increment(1);
        Ok(IssuedMic {
            mic: mic_to_wire(&row),
            intermediate_pem: anchor.ca.cert_pem(),
            root_pem: nexus_ca::der_to_pem(self.peer.fleet.store().root_der()),
        })
    }

    async fn mics(&self, node_id: Option<String>) -> Result<Vec<Mic>, ApiError> {
        self.anchor()?;
        let rows = self
            .blocking(move |store| store.certificates(node_id.as_deref()))
            .await?;
        Ok(rows.iter().map(mic_to_wire).collect())
    }

    async fn revoke_mic(&self, serial: &str, reason: Option<String>) -> Result<Revoked, ApiError> {
        let anchor = self.anchor()?;
        let reason: nexus_ca::RevokeReason = reason
            .as_deref()
            .unwrap_or("unspecified")
            .parse()
            .map_err(|e: nexus_ca::CaError| ApiError::bad_request(format!("reason: {e}")))?;
        let wanted = serial.to_string();
        let Some(row) = self.blocking(move |s| s.certificate(&wanted)).await? else {
            return Err(ApiError::not_found(format!(
                "no certificate with serial {serial} was issued by this anchor; revoke it on the \
                 anchor that issued it (anchors: {})",
                self.anchor_apis()
            )));
        };
        let done = self
            .peer
            .revoke(vec![row.serial.clone()], reason)
            .await
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        let wanted = serial.to_string();
        let row = self
            .blocking(move |s| s.certificate(&wanted))
            .await?
            .unwrap_or(row);
        let issuer: [u8; 32] = anchor.ca.fingerprint();
        let crl_number = done
            .crl_number
            .or_else(|| self.peer.fleet.revocations().number_from(&issuer))
            .unwrap_or(0);
        Ok(Revoked {
            mic: mic_to_wire(&row),
            crl_number,
        })
    }

    async fn promote(&self, node_id: &str) -> Result<Anchor, ApiError> {
        self.anchor()?;
        if !self.peer.holds_root() {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "not_root_holder",
                "promotions are signed with the fleet root key, which only the fleet's first \
                 anchor holds: send this request to its API",
            ));
        }
        let target = Self::parse_id(node_id)?;
        let member = self.mesh.member(&target).ok_or_else(|| {
            ApiError::not_found(format!("node {node_id} is not known to this anchor"))
        })?;
        if member.status == NodeStatus::Decommissioned {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "decommissioned",
                format!("node {node_id} is decommissioned"),
            ));
        }
        if member.info.as_ref().is_some_and(|i| i.role == Role::Anchor) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_anchor",
                format!("node {node_id} is already an anchor"),
            ));
        }
        self.peer
            .authorize_promotion(target)
            .await
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        tracing::info!(node = %target, "promotion to anchor authorized");
        Ok(anchor_to_wire(
            &target.to_string(),
            "pending",
            Some(&member),
        ))
    }

    async fn anchors(&self) -> Result<Vec<Anchor>, ApiError> {
        let mut anchors: BTreeMap<String, Anchor> = self
            .mesh
            .members()
            .iter()
            .filter(|m| m.info.as_ref().is_some_and(|i| i.role == Role::Anchor))
            .map(|m| {
                let id = m.node_id.to_string();
                (id.clone(), anchor_to_wire(&id, "active", Some(m)))
            })
            .collect();
        if self.peer.holds_root() {
            for (node, _, done) in self.blocking(|s| s.promotions()).await? {
                if done.is_none() && !anchors.contains_key(&node) {
                    let member = node
                        .parse::<NodeId>()
                        .ok()
                        .and_then(|id| self.mesh.member(&id));
                    anchors.insert(
                        node.clone(),
                        anchor_to_wire(&node, "pending", member.as_ref()),
                    );
                }
            }
        }
        Ok(anchors.into_values().collect())
    }

    async fn transparency_sth(&self) -> Result<nexus_api::wire::SignedTreeHead, ApiError> {
        self.transparency(|log| log.signed_head()).await
    }

    async fn transparency_entries(
        &self,
        lookup: nexus_api::wire::TransparencyLookup,
        start: u64,
        end: Option<u64>,
        limit: usize,
    ) -> Result<nexus_api::wire::TransparencyEntries, ApiError> {
        self.transparency(move |log| log.entries(&lookup, start, end, limit))
            .await
    }

    async fn transparency_inclusion(
        &self,
        target: nexus_api::wire::InclusionTarget,
        size: Option<u64>,
    ) -> Result<nexus_api::wire::InclusionProof, ApiError> {
        self.transparency(move |log| log.inclusion(&target, size))
            .await
    }

    async fn transparency_consistency(
        &self,
        first: u64,
        second: Option<u64>,
    ) -> Result<nexus_api::wire::ConsistencyProof, ApiError> {
        self.transparency(move |log| log.consistency(first, second))
            .await
    }

    async fn transparency_mirrors(
        &self,
    ) -> Result<Vec<nexus_api::wire::TransparencyMirror>, ApiError> {
        let mirrors = self.peer.mirrors().ok_or_else(|| {
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "not_an_anchor",
                "only anchors mirror the other anchors' transparency logs",
            )
        })?;
        Ok(mirrors.status())
    }

    async fn config_list(
        &self,
        kind: ConfigKind,
        tenant: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<ConfigPage, ApiError> {
        let replication = self.replication()?;
        let kind = node_kind(&kind);
        let page = tokio::task::spawn_blocking(move || {
            replication.list(&kind, tenant.as_deref(), after.as_deref(), limit)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(write_error)?;
        Ok(ConfigPage {
            items: page.items,
            more: page.more,
            version: page.version,
        })
    }

    async fn config_get(
        &self,
        kind: ConfigKind,
        tenant: Option<String>,
        id: String,
    ) -> Result<ConfigObject, ApiError> {
        let replication = self.replication()?;
        let node_kind = node_kind(&kind);
        let (value, version, quarantined) = tokio::task::spawn_blocking(move || {
            replication.get(&node_kind, tenant.as_deref(), &id)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(write_error)?;
        Ok(ConfigObject {
            value,
            version,
            quarantined,
        })
    }

    async fn config_put(
        &self,
        caller: &Caller,
        kind: ConfigKind,
        tenant: Option<String>,
        id: String,
        body: serde_json::Value,
    ) -> Result<(ConfigObject, bool), ApiError> {
        let replication = self.replication()?;
        let who = crdt_caller(caller)?;
        if kind == ConfigKind::Tenants {
            crate::check_name("tenant", &id).map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        let result = replication
            .put_object(&who, &node_kind(&kind), tenant.as_deref(), &id, body)
            .await;
        let (value, version, created) = result.map_err(write_error)?;
        Ok((
            ConfigObject {
                value,
                version,
                quarantined: None,
            },
            created,
        ))
    }

    async fn config_delete(
        &self,
        caller: &Caller,
        kind: ConfigKind,
        tenant: Option<String>,
        id: String,
    ) -> Result<Option<u64>, ApiError> {
        let replication = self.replication()?;
        let who = crdt_caller(caller)?;
        replication
            .delete(&who, &node_kind(&kind), tenant.as_deref(), &id)
            .await
            .map_err(write_error)
    }

    async fn fleet_settings(&self) -> Result<(serde_json::Value, u64), ApiError> {
        Ok(self.replication()?.settings())
    }

    async fn put_fleet_settings(
        &self,
        caller: &Caller,
        body: serde_json::Value,
    ) -> Result<(serde_json::Value, u64), ApiError> {
        let replication = self.replication()?;
        let who = crdt_caller(caller)?;
        replication
            .put_settings(&who, body)
            .await
            .map_err(write_error)
    }

    async fn snapshot_create(
        &self,
        caller: &Caller,
        document: Option<String>,
        name: String,
    ) -> Result<serde_json::Value, ApiError> {
        let replication = self.replication()?;
        let who = crdt_caller(caller)?;
        replication
            .create_snapshot(&who, document.as_deref(), &name)
            .await
            .map_err(write_error)
    }

    async fn snapshots(
        &self,
        document: Option<String>,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        let replication = self.replication()?;
        replication
            .snapshots(document.as_deref())
            .map_err(write_error)
    }

    async fn rollback(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError> {
        let replication = self.replication()?;
        let who = crdt_caller(caller)?;
        replication.rollback(&who, id).await.map_err(write_error)
    }

    async fn config_status(&self) -> Result<serde_json::Value, ApiError> {
        // document → "version:digest" → nodes reporting it.
        let mut spread: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for (node, key, value) in self
            .mesh
            .published_prefix(crate::replication::GOSSIP_PREFIX_CONFIG)
            .await
        {
            let Some(doc) = key.strip_prefix(crate::replication::GOSSIP_PREFIX_CONFIG) else {
                continue;
            };
            spread
                .entry(doc.to_string())
                .or_default()
                .entry(value)
                .or_default()
                .push(node.to_string());
        }
        let documents: Vec<serde_json::Value> = spread
            .into_iter()
            .map(|(doc, states)| {
                let states: Vec<serde_json::Value> = states
                    .into_iter()
                    .map(|(state, mut nodes)| {
                        nodes.sort();
                        let (version, digest) = state.split_once(':').unwrap_or((&state, ""));
                        serde_json::json!({
                            "version": version.parse::<u64>().unwrap_or(0),
                            "heads_digest": digest,
                            "nodes": nodes.len(),
                            "node_ids": nodes,
                        })
                    })
                    .collect();
                serde_json::json!({ "document": doc, "converged": states.len() == 1, "states": states })
            })
            .collect();
        let local = match &self.replication {
            Some(replication) => serde_json::Value::from(replication.local_status()),
            None => serde_json::Value::Array(Vec::new()),
        };
        Ok(serde_json::json!({
            "documents": documents,
            "node_id": self.node_id.to_string(),
            "local": local,
        }))
    }

    fn events(&self) -> Option<Arc<dyn nexus_api::watch::EventSource>> {
        self.events.clone()
    }

    fn crls(&self) -> Vec<(String, Vec<u8>)> {
        self.peer
            .fleet
            .revocations()
            .crls()
            .into_iter()
            .map(|(crl, der)| (hex::encode(crl.issuer_fingerprint), der))
            .collect()
    }

    async fn drain(&self, node_id: &str) -> Result<Node, ApiError> {
        self.act(node_id, OperatorAction::Drain).await
    }

    async fn decommission(&self, node_id: &str) -> Result<Node, ApiError> {
        if node_id == self.node_id.to_string() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "self_decommission",
                "a node cannot decommission itself: send the request to another node",
            ));
        }
        self.act(node_id, OperatorAction::Decommission).await
    }

    async fn create_token(&self, request: CreateToken) -> Result<CreatedToken, ApiError> {
        self.require_anchor()?;
        let (ttl, uses) = validate_token_request(&request)?;
        // The token's tenant must exist in the fleet configuration before its nodes write.
        let tenant = request
            .tenant
            .clone()
            .unwrap_or_else(|| crate::DEFAULT_TENANT.to_string());
        crate::check_name("tenant", &tenant).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(replication) = &self.replication {
            replication
                .ensure_tenant(&tenant)
                .await
                .map_err(|e| ApiError::internal(format!("registering tenant {tenant}: {e:#}")))?;
        }
        if self.quic_addr.ip().is_unspecified() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_advertised_address",
                format!(
                    "this anchor's QUIC address {} is a wildcard, which a joining node cannot dial: bind --quic to a concrete address",
                    self.quic_addr
                ),
            ));
        }
        let now = now_ms();
        let row = TokenRow {
            id: String::new(),
            secret_hash: [0; 32],
            tenant: request
                .tenant
                .clone()
                .unwrap_or_else(|| crate::DEFAULT_TENANT.to_string()),
            site: request.site.clone(),
            labels: request.labels.clone(),
            max_uses: uses,
            uses: 0,
            expires_at_ms: now + ttl.as_millis() as u64,
            created_at_ms: now,
            revoked_at_ms: None,
        };
        // Every anchor known, this one first: the token works at any of them.
        let mut anchors = vec![self.quic_addr];
        anchors.extend(
            self.mesh
                .members()
                .into_iter()
                .filter(|m| m.node_id != self.node_id && m.status == NodeStatus::Online)
                .filter_map(|m| m.info)
                .filter(|i| i.role == Role::Anchor && !i.quic_addr.ip().is_unspecified())
                .map(|i| i.quic_addr)
                .take(7),
        );
        let (fleet, fingerprint) = (self.fleet_id.clone(), self.root_fingerprint);
        let (token, row) = self
            .blocking(move |store| {
                crate::enroll::create_token(store, &fleet, anchors, fingerprint, row)
            })
            .await?;
        tracing::info!(token = %row.id, uses, ttl_s = ttl.as_secs(), "join token created");
        self.peer.advertise_token(&row).await;
        Ok(CreatedToken {
            token: token.encode(),
            info: token_to_wire(&row),
        })
    }

    async fn tokens(&self) -> Result<Vec<Token>, ApiError> {
        self.require_anchor()?;
        let rows = self.blocking(|store| store.tokens()).await?;
        // Uses count fleet-wide: joins other anchors admitted with a token are added.
        Ok(rows
            .into_iter()
            .map(|mut row| {
                row.uses = row.uses.saturating_add(self.peer.remote_uses(&row.id));
                token_to_wire(&row)
            })
            .collect())
    }

    async fn revoke_token(&self, token_id: &str) -> Result<Token, ApiError> {
        self.require_anchor()?;
        let id = token_id.to_string();
        let row = self.blocking(move |store| store.revoke_token(&id)).await?;
        match row {
            Some(row) => {
                tracing::info!(token = %row.id, "join token revoked");
                // The other anchors must refuse it too.
                self.peer.advertise_token(&row).await;
                Ok(token_to_wire(&row))
            }
            None => Err(ApiError::not_found(format!(
                "join token {token_id} does not exist on this anchor"
            ))),
        }
    }

    fn health(&self) -> Health {
        let checks = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let status = if checks.values().all(|v| v == "ok") {
            "ok"
        } else {
            "degraded"
        };
        Health {
            status: status.to_string(),
            node_id: self.node_id.to_string(),
            fleet_id: self.fleet_id.clone(),
            role: self.role.as_str().to_string(),
            checks,
        }
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn record_api_call(&self, tenant: &str) {
        if let Some(usage) = &self.usage {
            usage.api_call(tenant, || {
                self.replication.as_ref().is_some_and(|r| {
                    r.get(&crate::replication::Kind::Tenant, None, tenant)
                        .is_ok()
                })
            });
        }
    }

    async fn usage(
        &self,
        tenant: &str,
        range: nexus_crdt::usage::UsageRange,
    ) -> Result<nexus_api::usage::UsageTotals, ApiError> {
        let usage = match &self.usage {
            Some(usage) if self.role == Role::Anchor => usage.clone(),
            _ => {
                return Err(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "not_an_anchor",
                    format!(
                        "anchors roll up the usage every node reports and this node is not one: \
                         ask an anchor ({})",
                        self.anchor_apis()
                    ),
                ));
            }
        };
        usage
            .totals(tenant, range)
            .await
            .map_err(|err| ApiError::internal(format!("reading usage: {err:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uses: u32, max_uses: u32, expires_at_ms: u64, revoked: bool) -> TokenRow {
        TokenRow {
            id: "t".into(),
            secret_hash: [0; 32],
            tenant: "default".into(),
            site: None,
            labels: BTreeMap::new(),
            max_uses,
            uses,
            expires_at_ms,
            created_at_ms: 0,
            revoked_at_ms: revoked.then_some(1),
        }
    }

    #[test]
    fn token_states() {
        assert_eq!(token_state(&row(0, 1, 100, false), 50), "active");
        assert_eq!(token_state(&row(1, 1, 100, false), 50), "used");
        assert_eq!(token_state(&row(0, 1, 100, false), 150), "expired");
        assert_eq!(token_state(&row(0, 1, 100, true), 50), "revoked");
    }

    #[test]
    fn token_requests_are_validated_field_by_field() {
        assert!(validate_token_request(&CreateToken::default()).is_ok());
        let cases = [
            (
                CreateToken {
                    ttl_seconds: Some(0),
                    ..Default::default()
                },
                "ttl_seconds",
            ),
            (
                CreateToken {
                    uses: Some(0),
                    ..Default::default()
                },
                "uses",
            ),
            (
                CreateToken {
                    tenant: Some("a/b".into()),
                    ..Default::default()
                },
                "tenant",
            ),
            (
                CreateToken {
                    site: Some(String::new()),
                    ..Default::default()
                },
                "site",
            ),
            (
                CreateToken {
                    labels: BTreeMap::from([("".to_string(), "v".to_string())]),
                    ..Default::default()
                },
                "labels",
            ),
        ];
        for (request, field) in cases {
            let err = validate_token_request(&request).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(
                err.message.starts_with(field) || err.message.contains(field),
                "{field}: {}",
                err.message
            );
        }
    }
}
