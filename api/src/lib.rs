//! The Nexus Cloud HTTP API, served by every node.
//!
//! Parts:
//! - [`wire`]: JSON bodies of `/v1` (separate from internal types).
//! - [`Backend`]: what the node provides to the API. The API never reaches another node: every
//!   read comes from the answering node's local state.
//! - [`router`]: the axum routes, API-key authentication, JSON errors, metrics.
//! - [`cursor`]: opaque, stable pagination cursors.
//! - [`openapi`]: the OpenAPI 3.1 document generated from the handlers' annotations, served
//!   unauthenticated at `GET /v1/openapi.json` and committed as `api/openapi.json`.
//!
//! Routes: `GET /v1/nodes`, `GET /v1/nodes/{id}`, `POST /v1/nodes/{id}/drain`,
//! `POST /v1/nodes/{id}/decommission`, `POST /v1/tokens`, `GET /v1/tokens`,
//! `DELETE /v1/tokens/{id}`, `GET /healthz`, `GET /metrics`; the transparency log's
//! `GET /v1/transparency/{sth,entries,proof/inclusion,proof/consistency}` (see [`transparency`]).

pub mod access;
pub mod auth;
pub mod config;
pub mod cursor;
pub mod grpc;
pub mod openapi;
pub mod tenants;
pub mod transparency;
pub mod usage;
pub mod watch;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::rejection::JsonRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::wire::{
    Anchor, Caller, CreateToken, CreatedToken, CsrRequest, ErrorBody, ErrorDetail, Health,
    IssuedMic, Mic, Node, Page, PromoteRequest, RevokeRequest, Revoked, Token,
};

/// The client certificate chain (DER, leaf first) a TLS connection presented; the TLS server
/// puts it into every request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificates(pub Vec<Vec<u8>>);

/// Default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;

/// An API error: HTTP status, stable code, and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human message.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400 with the offending input named in the message.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 500: something on this node failed (storage); the message says what.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// What the node behind the API provides.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The caller an API key stands for, when it is a valid, unrevoked, unexpired key here.
    fn authenticate_key(&self, api_key: &str) -> Option<Caller>;
    /// The caller an OIDC bearer token (a JWT) stands for, checked against the issuer its
    /// tenant configured; the error says why it was refused.
    async fn authenticate_jwt(&self, _token: &str) -> Result<Caller, String> {
        Err("OIDC tokens are not accepted by this node".to_string())
    }
    /// The API rate quota of `tenant` on this node: (requests per second, burst).
    fn api_quota(&self, _tenant: &str) -> Option<(u64, u64)> {
        None
    }
    /// Sets (`Some`) or removes (`None`) operator labels of a node; durable before it returns.
    async fn set_labels(
        &self,
        _caller: &Caller,
        _node_id: &str,
        _labels: std::collections::BTreeMap<String, Option<String>>,
    ) -> Result<Node, ApiError> {
        Err(no_config())
    }
    /// Appends one call to the audit log (must not block: the node queues it).
    fn record_audit(&self, _entry: wire::AuditEntry) {}
    /// Audit entries matching `query`, newest first, and whether more follow.
    async fn audit(
        &self,
        _query: wire::AuditQuery,
    ) -> Result<(Vec<wire::AuditEntry>, bool), ApiError> {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_audit_log",
            "this node keeps no audit log",
        ))
    }
    /// Creates an API key for `caller`; durable before it returns.
    async fn create_key(
        &self,
        _caller: &Caller,
        _request: wire::CreateKey,
    ) -> Result<wire::CreatedKey, ApiError> {
        Err(no_config())
    }
    /// API keys this node knows: the fleet's and those of the tenants it holds (or of one).
    async fn keys(&self, _tenant: Option<String>) -> Result<Vec<wire::ApiKey>, ApiError> {
        Err(no_config())
    }
    /// Revokes an API key (it stays listed, refused); `tenant` confines the lookup.
    async fn revoke_key(
        &self,
        _caller: &Caller,
        _tenant: Option<String>,
        _id: &str,
    ) -> Result<wire::ApiKey, ApiError> {
        Err(no_config())
    }
    /// A tenant's OIDC provider, if configured.
    async fn oidc(&self, _tenant: &str) -> Result<Option<serde_json::Value>, ApiError> {
        Err(no_config())
    }
    /// Sets (`Some`) or removes (`None`) a tenant's OIDC provider; durable before it returns.
    async fn put_oidc(
        &self,
        _caller: &Caller,
        _tenant: &str,
        _provider: Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, ApiError> {
        Err(no_config())
    }
    /// Checks an OIDC provider body for `tenant` without writing it (onboarding checks every
    /// input before it writes anything).
    async fn check_oidc(
        &self,
        _tenant: &str,
        _provider: &serde_json::Value,
    ) -> Result<(), ApiError> {
        Err(no_config())
    }
    /// Checks an API key lifetime (`90d`) without creating a key.
    fn check_key_ttl(&self, _ttl: &str) -> Result<(), ApiError> {
        Ok(())
    }
    /// Anchors: makes sure this anchor has a CA for `tenant`, creating it; its certificate
    /// (PEM), or `None` when this node issues no tenant CAs.
    async fn ensure_tenant_ca(&self, _tenant: &str) -> Result<Option<String>, ApiError> {
        Ok(None)
    }
    /// The fleet duties as this node sees them.
    fn duties(&self) -> Vec<tenants::Duty> {
        Vec::new()
    }
    /// Every node this node knows of, ordered by node id.
    fn nodes(&self) -> Vec<Node>;
    /// One node.
    fn node(&self, node_id: &str) -> Option<Node>;
    /// Marks a node draining, fleet-wide.
    async fn drain(&self, node_id: &str) -> Result<Node, ApiError>;
    /// Removes a node from the fleet, fleet-wide.
    async fn decommission(&self, node_id: &str) -> Result<Node, ApiError>;
    /// Creates a join token (anchors only).
    async fn create_token(&self, request: CreateToken) -> Result<CreatedToken, ApiError>;
    /// Lists join tokens, ordered by id (anchors only).
    async fn tokens(&self) -> Result<Vec<Token>, ApiError>;
    /// Revokes a join token (anchors only).
    async fn revoke_token(&self, token_id: &str) -> Result<Token, ApiError>;
    /// Liveness and local checks.
    fn health(&self) -> Health;
    /// Authenticates a client certificate chain (mTLS): a valid, unrevoked MIC of this fleet.
    fn authenticate_certificate(&self, _chain: &[Vec<u8>]) -> Result<Caller, String> {
        Err("certificate authentication is not available on this node".to_string())
    }
    /// Issues a MIC from a CSR (anchors).
    async fn issue_mic(&self, _request: CsrRequest) -> Result<IssuedMic, ApiError> {
        Err(not_an_anchor())
    }
    /// The MICs this anchor issued, optionally of one node, ordered by serial.
    async fn mics(&self, _node_id: Option<String>) -> Result<Vec<Mic>, ApiError> {
        Err(not_an_anchor())
    }
    /// Revokes a MIC this anchor issued.
    async fn revoke_mic(
        &self,
        _serial: &str,
        _reason: Option<String>,
    ) -> Result<Revoked, ApiError> {
        Err(not_an_anchor())
    }
    /// Authorizes a node to become an anchor (the anchor holding the fleet root key).
    async fn promote(&self, _node_id: &str) -> Result<Anchor, ApiError> {
        Err(not_an_anchor())
    }
    /// Anchors, and pending promotions, ordered by node id.
    async fn anchors(&self) -> Result<Vec<Anchor>, ApiError> {
        Ok(Vec::new())
    }
    /// This anchor's transparency log: its signed tree head (anchors).
    async fn transparency_sth(&self) -> Result<wire::SignedTreeHead, ApiError> {
        Err(not_an_anchor())
    }
    /// Transparency log entries with index in `start..end` (`end`: the log's size when absent
    /// or beyond it) that `lookup` selects, at most `limit`, by index (anchors). A `start`
    /// beyond the log is a 400 naming `start`.
    async fn transparency_entries(
        &self,
        _lookup: wire::TransparencyLookup,
        _start: u64,
        _end: Option<u64>,
        _limit: usize,
    ) -> Result<wire::TransparencyEntries, ApiError> {
        Err(not_an_anchor())
    }
    /// The audit path of one log entry in the tree of `size` entries (default: the whole
    /// log). 404 for an entry the log does not hold, 400 naming `size` for a size beyond the
    /// log or one that does not include the entry (anchors).
    async fn transparency_inclusion(
        &self,
        _target: wire::InclusionTarget,
        _size: Option<u64>,
    ) -> Result<wire::InclusionProof, ApiError> {
        Err(not_an_anchor())
    }
    /// The proof that the log at size `second` (default: now) extends it at size `first`; 400
    /// naming the size beyond the log (anchors).
    async fn transparency_consistency(
        &self,
        _first: u64,
        _second: Option<u64>,
    ) -> Result<wire::ConsistencyProof, ApiError> {
        Err(not_an_anchor())
    }
    /// The other anchors' transparency logs as this anchor mirrors them.
    async fn transparency_mirrors(&self) -> Result<Vec<crate::wire::TransparencyMirror>, ApiError> {
        Err(not_an_anchor())
    }
    /// A page of a configuration collection: effective objects after `after`, in id order.
    async fn config_list(
        &self,
        _kind: config::ConfigKind,
        _tenant: Option<String>,
        _after: Option<String>,
        _limit: usize,
    ) -> Result<config::ConfigPage, ApiError> {
        Err(no_config())
    }
    /// One configuration object as stored, with its quarantine reasons.
    async fn config_get(
        &self,
        _kind: config::ConfigKind,
        _tenant: Option<String>,
        _id: String,
    ) -> Result<config::ConfigObject, ApiError> {
        Err(no_config())
    }
    /// Creates or replaces an object for `caller`, durable before it returns; `true` when
    /// it was created.
    async fn config_put(
        &self,
        _caller: &Caller,
        _kind: config::ConfigKind,
        _tenant: Option<String>,
        _id: String,
        _body: serde_json::Value,
    ) -> Result<(config::ConfigObject, bool), ApiError> {
        Err(no_config())
    }
    /// Deletes an object; `Ok(None)` when there is none, else the document's new version.
    async fn config_delete(
        &self,
        _caller: &Caller,
        _kind: config::ConfigKind,
        _tenant: Option<String>,
        _id: String,
    ) -> Result<Option<u64>, ApiError> {
        Err(no_config())
    }
    /// The fleet settings and the fleet document's version.
    async fn fleet_settings(&self) -> Result<(serde_json::Value, u64), ApiError> {
        Err(no_config())
    }
    /// Replaces the fleet settings (anchors); durable before it returns.
    async fn put_fleet_settings(
        &self,
        _caller: &Caller,
        _body: serde_json::Value,
    ) -> Result<(serde_json::Value, u64), ApiError> {
        Err(no_config())
    }
    /// Names the current state of a document (`None`: the node's tenant document).
    async fn snapshot_create(
        &self,
        _caller: &Caller,
        _document: Option<String>,
        _name: String,
    ) -> Result<serde_json::Value, ApiError> {
        Err(no_config())
    }
    /// Snapshots of the documents this node holds (or of one).
    async fn snapshots(
        &self,
        _document: Option<String>,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        Err(no_config())
    }
    /// Restores a snapshot's state as a new change.
    async fn rollback(&self, _caller: &Caller, _id: &str) -> Result<serde_json::Value, ApiError> {
        Err(no_config())
    }
    /// The fleet's configuration version spread, per document.
    async fn config_status(&self) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::internal(
            "no replicated configuration on this node",
        ))
    }
    /// The CRLs this node enforces: (issuer fingerprint hex, DER), ordered by issuer.
    /// This node's event journal, for `GET /v1/watch` and streaming transports.
    fn events(&self) -> Option<Arc<dyn watch::EventSource>> {
        None
    }
    fn crls(&self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
    /// Prometheus text exposition of this node's metrics.
    fn metrics(&self) -> String;
    /// Counts one API call answered for a caller of `tenant` (usage metering; must not block).
    fn record_api_call(&self, _tenant: &str) {}
    /// `tenant`'s usage over `range` as this anchor rolled it up (anchors; others 421).
    async fn usage(
        &self,
        _tenant: &str,
        _range: nexus_crdt::usage::UsageRange,
    ) -> Result<usage::UsageTotals, ApiError> {
        Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_an_anchor",
            "anchors roll usage up and this node is not one: ask an anchor (GET /v1/nodes shows \
             which nodes have role anchor)",
        ))
    }
}

type Shared = Arc<dyn Backend>;

fn not_an_anchor() -> ApiError {
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "not_an_anchor",
        "certificates are issued and revoked by anchors: send this request to an anchor's API \
         (GET /v1/nodes shows which nodes have role anchor)",
    )
}

fn no_config() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_configuration",
        "no replicated configuration on this node",
    )
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The full router: `/v1` behind authentication, permissions, rate limits and the audit log
/// ([`auth::gate`]); `/healthz`, `/metrics` and `/v1/crl` open.
pub fn router(backend: Shared) -> Router {
    let gate = auth::Gate {
        backend: backend.clone(),
        limits: Arc::new(auth::RateLimits::default()),
    };
    // gRPC (nexus.v1) on the same port, behind the same gate (see `grpc`).
    let grpc = grpc::router(gate.clone());
    let v1 = Router::new()
        .route("/v1/keys", post(access::create_key).get(access::list_keys))
        .route(
            "/v1/keys/{id}",
            get(access::get_key).delete(access::revoke_key),
        )
        .route(
            "/v1/tenants/{id}/oidc",
            get(access::get_oidc)
                .put(access::put_oidc)
                .delete(access::delete_oidc),
        )
        .route("/v1/audit", get(access::audit))
        .route("/v1/tenants/{id}/usage", get(usage::usage))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}", get(get_node))
        .route("/v1/nodes/{id}/drain", post(drain_node))
        .route("/v1/nodes/{id}/labels", axum::routing::patch(patch_labels))
        .route("/v1/nodes/{id}/decommission", post(decommission_node))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/mics", get(list_mics))
        .route("/v1/mics/csr", post(issue_mic))
        .route("/v1/mics/{serial}", get(get_mic))
        .route("/v1/mics/{serial}/revoke", post(revoke_mic))
        .route("/v1/whoami", get(whoami))
        .route("/v1/transparency/sth", get(transparency::sth))
        .route("/v1/transparency/entries", get(transparency::entries))
        .route(
            "/v1/transparency/proof/inclusion",
            get(transparency::inclusion),
        )
        .route(
            "/v1/transparency/proof/consistency",
            get(transparency::consistency),
        )
        .route("/v1/anchors", post(promote).get(list_anchors))
        .route("/v1/transparency/mirrors", get(transparency_mirrors))
        .route(
            "/v1/routes",
            get(config::list_routes).post(config::create_route),
        )
        .route(
            "/v1/routes/{id}",
            get(config::get_route)
                .put(config::put_route)
                .patch(config::patch_route)
                .delete(config::delete_route),
        )
        .route(
            "/v1/sites/{site}/routes",
            get(config::list_site_routes).post(config::create_site_route),
        )
        .route(
            "/v1/sites/{site}/routes/{id}",
            get(config::get_site_route)
                .put(config::put_site_route)
                .patch(config::patch_site_route)
                .delete(config::delete_site_route),
        )
        .route(
            "/v1/firmware/targets",
            get(config::list_firmware).post(config::create_firmware),
        )
        .route(
            "/v1/firmware/targets/{id}",
            get(config::get_firmware)
                .put(config::put_firmware)
                .patch(config::patch_firmware)
                .delete(config::delete_firmware),
        )
        .route(
            "/v1/tenants",
            get(config::list_tenants).post(tenants::onboard_tenant),
        )
        .route(
            "/v1/tenants/{id}",
            get(config::get_tenant)
                .put(config::put_tenant)
                .patch(config::patch_tenant)
                .delete(config::delete_tenant),
        )
        .route(
            "/v1/fleet/policies",
            get(config::list_fleet_policies).post(config::create_fleet_policy),
        )
        .route(
            "/v1/fleet/policies/{id}",
            get(config::get_fleet_policy)
                .put(config::put_fleet_policy)
                .patch(config::patch_fleet_policy)
                .delete(config::delete_fleet_policy),
        )
        .route("/v1/fleet/duties", get(tenants::list_duties))
        .route(
            "/v1/fleet/settings",
            get(config::get_settings)
                .put(config::put_settings)
                .patch(config::patch_settings),
        )
        .route(
            "/v1/config/snapshots",
            get(config::list_snapshots).post(config::create_snapshot),
        )
        .route("/v1/config/snapshots/{id}", get(config::get_snapshot))
        .route("/v1/config/snapshots/{id}/rollback", post(config::rollback))
        .route("/v1/config/status", get(config_status))
        .route("/v1/watch", get(watch::watch))
        .route_layer(middleware::from_fn(config::if_match))
        .route_layer(middleware::from_fn_with_state(gate, auth::gate));
    Router::new()
        .merge(v1)
        .merge(grpc)
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .route("/v1/crl", get(get_crl))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(record_metrics))
        .with_state(backend)
}

/// Serves `router` on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // A fixed label set: any client can invent method names, and each would be a new series.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let code = response.status().as_u16().to_string();
    metrics::counter!("nexus_api_requests_total", "method" => method, "route" => route.clone(), "code" => code)
        .increment(1);
    metrics::histogram!("nexus_api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not supported on this route"),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route: the API lives under /v1 (see GET /v1/nodes)")
}

/// `?limit=&cursor=` of every list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page size.
    pub limit: Option<String>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// Validated limit.
    pub fn limit(&self) -> Result<usize, ApiError> {
        match &self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}, got {raw:?}"
                ))),
            },
        }
    }
}

/// Cuts one page out of `items` (already in stable order by `key`).
pub fn paginate<T>(
    items: Vec<T>,
    query: &PageQuery,
    kind: &str,
    key: impl Fn(&T) -> &str,
) -> Result<Page<T>, ApiError> {
    let limit = query.limit()?;
    let after = match &query.cursor {
        None => None,
        Some(raw) => Some(cursor::decode(kind, raw).map_err(ApiError::bad_request)?),
    };
    let mut page: Vec<T> = items
        .into_iter()
        .filter(|item| after.as_deref().is_none_or(|after| key(item) > after))
        .take(limit + 1)
        .collect();
    let next_cursor = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|last| cursor::encode(kind, key(last)))
    } else {
        None
    };
    Ok(Page {
        items: page,
        next_cursor,
    })
}

fn query_or_400(
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<PageQuery, ApiError> {
    query.map(|Query(q)| q).map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; lists accept only limit and cursor",
            err.body_text()
        ))
    })
}

#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "nodes",
    summary = "Lists the nodes of the fleet, by node id, as the answering node sees them",
    params(NodeQuery),
    responses(
        (status = 200, description = "A page of nodes; a caller confined to a tenant sees its tenant's.", body = Page<Node>),
        (status = 400, description = "A bad `limit`, `cursor` or filter, or an unknown query parameter; the message names it.", body = ErrorBody),
    ),
)]
async fn list_nodes(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    query: Result<Query<NodeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Node>>, ApiError> {
    let Query(q) = query.map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; /v1/nodes accepts limit, cursor, label, status, tenant and site",
            err.body_text()
        ))
    })?;
    let labels: Vec<(String, Option<String>)> = match &q.label {
        None => Vec::new(),
        Some(raw) => raw
            .split(',')
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                None => (l.trim().to_string(), None),
            })
            .collect(),
    };
    if labels.iter().any(|(k, _)| k.is_empty()) {
        return Err(ApiError::bad_request(
            "label must be key=value or key (present), comma-separated, e.g. label=zone=east,gpu",
        ));
    }
    const STATUSES: [&str; 5] = [
        "online",
        "degraded",
        "offline",
        "draining",
        "decommissioned",
    ];
    if let Some(status) = &q.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "status must be one of {STATUSES:?}, got {status:?}"
        )));
    }
    let own = caller.and_then(|c| c.0.tenant);
    let tenant = match (&own, q.tenant) {
        (Some(own), Some(asked)) if *own != asked => {
            return Ok(Json(Page {
                items: Vec::new(),
                next_cursor: None,
            }));
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    let nodes = backend
        .nodes()
        .into_iter()
        .filter(|n| tenant.as_ref().is_none_or(|t| *t == n.tenant_id))
        .filter(|n| q.site.as_ref().is_none_or(|s| *s == n.site))
        .filter(|n| q.status.as_ref().is_none_or(|s| *s == n.status))
        .filter(|n| {
            labels.iter().all(|(k, v)| match v {
                Some(v) => n.labels.get(k) == Some(v),
                None => n.labels.contains_key(k),
            })
        })
        .collect();
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    paginate(nodes, &page, "nodes", |n| &n.node_id).map(Json)
}

/// `GET /v1/nodes` query: pagination and filters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NodeQuery {
    /// Page size, 1..=1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Cursor from the previous page's `next_cursor`.
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
    /// Labels the node must carry: `key=value` or `key`, comma-separated (all must match).
    label: Option<String>,
    /// Only nodes with this status (online, degraded, offline, draining, decommissioned).
    status: Option<String>,
    /// Only this tenant's nodes (a tenant's caller sees its own only).
    tenant: Option<String>,
    /// Only nodes of this site.
    site: Option<String>,
}

/// `PATCH /v1/nodes/{id}/labels` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelPatch {
    /// Labels to set (`"key": "value"`) or remove (`"key": null`).
    pub labels: std::collections::BTreeMap<String, Option<String>>,
}

#[utoipa::path(
    patch,
    path = "/v1/nodes/{id}/labels",
    tag = "nodes",
    summary = "Sets or removes operator labels of a node (replicated in its tenant's configuration)",
    params(("id" = String, Path, description = "Node id, 32 lowercase hex characters.")),
    request_body = LabelPatch,
    responses(
        (status = 200, description = "The node with its labels.", body = Node),
        (status = 400, description = "A bad node id, label key or value; the message names it.", body = ErrorBody),
        (status = 404, description = "No such node visible to the caller.", body = ErrorBody),
    ),
)]
async fn patch_labels(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
    body: Result<Json<LabelPatch>, JsonRejection>,
) -> Result<Json<Node>, ApiError> {
    visible_node(&backend, &caller, &id)?;
    let patch = json_body(body, "label patch")?;
    if patch.labels.is_empty() {
        return Err(ApiError::bad_request(
            "labels: name at least one label to set or remove",
        ));
    }
    if patch.labels.len() > 64 {
        return Err(ApiError::bad_request(
            "labels: at most 64 labels in one patch",
        ));
    }
    let caller = caller
        .map(|c| c.0)
        .ok_or_else(|| ApiError::internal("the caller was not recorded"))?;
    backend
        .set_labels(&caller, &id, patch.labels)
        .await
        .map(Json)
}

pub(crate) fn check_node_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "node id must be 32 lowercase hex characters, got {id:?}"
        )))
    }
}

#[utoipa::path(
    get,
    path = "/v1/nodes/{id}",
    tag = "nodes",
    summary = "One node",
    params(
        ("id" = String, Path, description = "Node id: 32 lowercase hex characters.", pattern = "^[0-9a-f]{32}$"),
    ),
    responses(
        (status = 200, description = "The node.", body = Node),
        (status = 400, description = "The node id is not 32 lowercase hex characters.", body = ErrorBody),
        (status = 404, description = "No such node (or one of another tenant).", body = ErrorBody),
    ),
)]
async fn get_node(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    check_node_id(&id)?;
    let tenant = caller.and_then(|c| c.0.tenant);
    backend
        .node(&id)
        // Another tenant's node reads as absent: existence does not leak.
        .filter(|n| tenant.as_ref().is_none_or(|t| *t == n.tenant_id))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("node {id} is not known to this node")))
}

/// 404 unless `id` is a node `caller` may see: a tenant's caller sees its tenant's nodes only.
fn visible_node(
    backend: &Shared,
    caller: &Option<axum::Extension<Caller>>,
    id: &str,
) -> Result<(), ApiError> {
    check_node_id(id)?;
    let tenant = caller.as_ref().and_then(|c| c.0.tenant.clone());
    if let Some(tenant) = tenant {
        let node = backend.node(id);
        if node.as_ref().is_none_or(|n| n.tenant_id != tenant) {
            return Err(ApiError::not_found(format!(
                "node {id} is not known to this node"
            )));
        }
        // Anchors hold the fleet's CA and configuration: only a fleet admin acts on them,
        // whichever tenant they were enrolled in.
        if node.is_some_and(|n| n.role == "anchor") {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("node {id} is an anchor: only a fleet admin may change it"),
            ));
        }
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/drain",
    tag = "nodes",
    summary = "Marks a node draining, fleet-wide",
    params(
        ("id" = String, Path, description = "Node id: 32 lowercase hex characters.", pattern = "^[0-9a-f]{32}$"),
    ),
    responses(
        (status = 200, description = "The node, now draining.", body = Node),
        (status = 400, description = "The node id is not 32 lowercase hex characters.", body = ErrorBody),
        (status = 404, description = "No such node (or one of another tenant).", body = ErrorBody),
        (status = 409, description = "The node is decommissioned.", body = ErrorBody),
    ),
)]
async fn drain_node(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    visible_node(&backend, &caller, &id)?;
    backend.drain(&id).await.map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/decommission",
    tag = "nodes",
    summary = "Removes a node from the fleet, for good",
    params(
        ("id" = String, Path, description = "Node id: 32 lowercase hex characters.", pattern = "^[0-9a-f]{32}$"),
    ),
    responses(
        (status = 200, description = "The node, now decommissioned.", body = Node),
        (status = 400, description = "The node id is not 32 lowercase hex characters.", body = ErrorBody),
        (status = 404, description = "No such node (or one of another tenant).", body = ErrorBody),
        (status = 409, description = "The node is already decommissioned, or it is the answering node (ask another).", body = ErrorBody),
    ),
)]
async fn decommission_node(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    visible_node(&backend, &caller, &id)?;
    backend.decommission(&id).await.map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    summary = "Creates a join token (anchors)",
    request_body(content = CreateToken, description = "Every field is optional."),
    responses(
        (status = 201, description = "The token: its secret form is shown this once.", body = CreatedToken),
        (status = 400, description = "The body is not valid JSON of this shape; the message names the field.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = ErrorBody),
        (status = 409, description = "This node is not an anchor (join tokens are kept by anchors), or it cannot be reached by joining nodes.", body = ErrorBody),
    ),
)]
async fn create_token(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let Json(mut request) = body.map_err(|err| {
        // 415 without a JSON content type, 413 for an oversized body, 400 for anything wrong in
        // the JSON itself (the message names the field).
        let (status, code) = match err.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (err.status(), "unsupported_media_type"),
            StatusCode::PAYLOAD_TOO_LARGE => (err.status(), "payload_too_large"),
            _ => (StatusCode::BAD_REQUEST, "invalid_request"),
        };
        ApiError::new(
            status,
            code,
            format!("invalid token request body: {}", err.body_text()),
        )
    })?;
    // A tenant's admin admits nodes into its own tenant only.
    if let Some(own) = caller.and_then(|c| c.0.tenant) {
        match &request.tenant {
            Some(asked) if *asked != own => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "a caller of tenant {own} creates join tokens for tenant {own} only \
                         (asked for {asked:?})"
                    ),
                ));
            }
            _ => request.tenant = Some(own),
        }
    }
    let created = backend.create_token(request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    summary = "Lists join tokens, by id (anchors)",
    params(
        crate::openapi::PageParams,
    ),
    responses(
        (status = 200, description = "A page of join tokens (never their secrets).", body = Page<Token>),
        (status = 400, description = "A bad `limit` or `cursor`, or an unknown query parameter; the message names it.", body = ErrorBody),
        (status = 409, description = "This node is not an anchor (join tokens are kept by anchors), or it cannot be reached by joining nodes.", body = ErrorBody),
    ),
)]
async fn list_tokens(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Token>>, ApiError> {
    let query = query_or_400(query)?;
    let tenant = caller.and_then(|c| c.0.tenant);
    let mut tokens = backend.tokens().await?;
    tokens.retain(|t| tenant.as_ref().is_none_or(|own| *own == t.tenant));
    paginate(tokens, &query, "tokens", |t| &t.id).map(Json)
}

#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "tokens",
    summary = "Revokes a join token (anchors)",
    params(
        ("id" = String, Path, description = "Token id."),
    ),
    responses(
        (status = 200, description = "The token, now revoked.", body = Token),
        (status = 400, description = "The token id is malformed.", body = ErrorBody),
        (status = 404, description = "No such token.", body = ErrorBody),
        (status = 409, description = "This node is not an anchor (join tokens are kept by anchors), or it cannot be reached by joining nodes.", body = ErrorBody),
    ),
)]
async fn revoke_token(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Token>, ApiError> {
    if let Some(own) = caller.and_then(|c| c.0.tenant)
        && !backend
            .tokens()
            .await?
            .iter()
            .any(|t| t.id == id && t.tenant == own)
    {
        return Err(ApiError::not_found(format!("no join token {id:?}")));
    }
    backend.revoke_token(&id).await.map(Json)
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    summary = "Liveness and local checks",
    security(()),
    responses(
        (status = 200, description = "Every check passes.", body = Health),
        (status = 503, description = "A check fails; `checks` says which.", body = Health),
    ),
)]
async fn healthz(State(backend): State<Shared>) -> Response {
    let health = backend.health();
    let status = if health.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    summary = "This node's metrics (Prometheus text exposition)",
    description = "Open to scrapers without credentials, but series naming a tenant (a `tenant` label, or `document=\"tenant/…\"`) are shown only to a fleet admin and, for its own tenant, to that tenant's callers: scrape with the fleet admin key (`authorization: {credentials: …}` in Prometheus) to get them all.",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "Credentials were sent and refused.", body = ErrorBody),
    ),
)]
async fn metrics_text(State(backend): State<Shared>, request: Request) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let peer = request.extensions().get::<PeerCertificates>().cloned();
    let caller = if authorization.is_some() || peer.is_some() {
        match auth::authenticate(backend.as_ref(), authorization, peer.as_ref()).await {
            Ok(caller) => Some(caller),
            Err(err) if authorization.is_some() => return err.into_response(),
            // A client certificate that is not a member's reads like no credentials.
            Err(_) => None,
        }
    } else {
        None
    };
    let text = backend.metrics();
    let text = match &caller {
        Some(c) if c.role == "fleet-admin" && c.tenant.is_none() => text,
        other => auth::confine_metrics(&text, other.as_ref().and_then(|c| c.tenant.as_deref())),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Json<T>, JsonRejection>,
    what: &str,
) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|err| {
        let (status, code) = match err.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (err.status(), "unsupported_media_type"),
            StatusCode::PAYLOAD_TOO_LARGE => (err.status(), "payload_too_large"),
            _ => (StatusCode::BAD_REQUEST, "invalid_request"),
        };
        ApiError::new(
            status,
            code,
            format!("invalid {what} body: {}", err.body_text()),
        )
    })
}

pub(crate) fn require_fleet_admin(
    caller: &Option<axum::Extension<Caller>>,
) -> Result<(), ApiError> {
    match caller {
        Some(axum::Extension(c)) if c.role == "fleet-admin" => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only a fleet admin may do this",
        )),
    }
}

fn check_serial(serial: &str) -> Result<String, ApiError> {
    let ok = !serial.is_empty()
        && serial.len() <= 40
        && serial.len().is_multiple_of(2)
        && serial.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(serial.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(format!(
            "certificate serial must be an even number of hex digits (at most 40), got {serial:?}"
        )))
    }
}

#[utoipa::path(
    post,
    path = "/v1/mics/csr",
    tag = "trust",
    summary = "Issues a MIC from a CSR (anchors)",
    request_body(content = CsrRequest),
    responses(
        (status = 201, description = "The certificate and its chain.", body = IssuedMic, headers(("Location" = String, description = "`/v1/mics/{serial}`"))),
        (status = 400, description = "The body is not valid JSON of this shape; the message names the field.", body = ErrorBody),
        (status = 409, description = "The node was decommissioned and cannot be certified again.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = ErrorBody),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = ErrorBody),
        (status = 422, description = "The CSR names another node than its key is.", body = ErrorBody),
    ),
)]
async fn issue_mic(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Json<CsrRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    require_fleet_admin(&caller)?;
    let request = json_body(body, "CSR request")?;
    let issued = backend.issue_mic(request).await?;
    let location = format!("/v1/mics/{}", issued.mic.serial);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(issued),
    )
        .into_response())
}

/// Query of `GET /v1/mics`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MicQuery {
    limit: Option<String>,
    cursor: Option<String>,
    node_id: Option<String>,
}

/// The MICs `caller` may see: a tenant's caller sees those of its tenant's nodes.
async fn visible_mics(
    backend: &Shared,
    caller: &Option<axum::Extension<Caller>>,
    node: Option<String>,
) -> Result<Vec<Mic>, ApiError> {
    let mut mics = backend.mics(node).await?;
    if let Some(own) = caller.as_ref().and_then(|c| c.0.tenant.clone()) {
        // The tenant's own nodes, anchors excepted (their certificates are the fleet's).
        let nodes: std::collections::HashSet<String> = backend
            .nodes()
            .into_iter()
            .filter(|n| n.tenant_id == own && n.role != "anchor")
            .map(|n| n.node_id)
            .collect();
        mics.retain(|m| nodes.contains(&m.node_id) && m.kind != "anchor" && m.kind != "promotion");
    }
    Ok(mics)
}

#[utoipa::path(
    get,
    path = "/v1/mics",
    tag = "trust",
    summary = "Lists the MICs this anchor issued, by serial",
    params(
        crate::openapi::PageParams,
        ("node_id" = Option<String>, Query, description = "Only this node's certificates (32 lowercase hex characters).", pattern = "^[0-9a-f]{32}$"),
    ),
    responses(
        (status = 200, description = "A page of certificates.", body = Page<Mic>),
        (status = 400, description = "A bad `limit` or `cursor`, or an unknown query parameter; the message names it.", body = ErrorBody),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = ErrorBody),
    ),
)]
async fn list_mics(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    query: Result<Query<MicQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Mic>>, ApiError> {
    let Query(query) = query.map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; this list accepts limit, cursor and node_id",
            err.body_text()
        ))
    })?;
    if let Some(id) = &query.node_id {
        check_node_id(id)?;
    }
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let mics = visible_mics(&backend, &caller, query.node_id).await?;
    paginate(mics, &page, "mics", |m| &m.serial).map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/mics/{serial}",
    tag = "trust",
    summary = "One MIC this anchor issued",
    params(
        ("serial" = String, Path, description = "Certificate serial: an even number of hex digits, at most 40.", pattern = "^([0-9a-fA-F]{2}){1,20}$"),
    ),
    responses(
        (status = 200, description = "The certificate.", body = Mic),
        (status = 400, description = "The serial is not hex.", body = ErrorBody),
        (status = 404, description = "This anchor issued no such certificate.", body = ErrorBody),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = ErrorBody),
    ),
)]
async fn get_mic(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    Path(serial): Path<String>,
) -> Result<Json<Mic>, ApiError> {
    let serial = check_serial(&serial)?;
    visible_mics(&backend, &caller, None)
        .await?
        .into_iter()
        .find(|m| m.serial == serial)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no certificate with serial {serial} was issued by this anchor"
            ))
        })
}

#[utoipa::path(
    post,
    path = "/v1/mics/{serial}/revoke",
    tag = "trust",
    summary = "Revokes a MIC this anchor issued",
    request_body(content = Option<RevokeRequest>, description = "Optional: the reason."),
    params(
        ("serial" = String, Path, description = "Certificate serial: an even number of hex digits, at most 40.", pattern = "^([0-9a-fA-F]{2}){1,20}$"),
    ),
    responses(
        (status = 200, description = "The certificate, now revoked, and the CRL that lists it.", body = Revoked),
        (status = 400, description = "The serial is not hex, or the body is not a revocation request.", body = ErrorBody),
        (status = 404, description = "This anchor issued no such certificate.", body = ErrorBody),
        (status = 415, description = "A body that is not `application/json`.", body = ErrorBody),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = ErrorBody),
    ),
)]
async fn revoke_mic(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    Path(serial): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Revoked>, ApiError> {
    let serial = check_serial(&serial)?;
    if caller.as_ref().is_some_and(|c| c.0.tenant.is_some())
        && !visible_mics(&backend, &caller, None)
            .await?
            .iter()
            .any(|m| m.serial == serial)
    {
        return Err(ApiError::not_found(format!(
            "no certificate with serial {serial} was issued by this anchor"
        )));
    }
    let request: RevokeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeRequest::default()
    } else {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the revocation body as application/json (or no body at all)",
            ));
        }
        // `null` is no request, like an empty body.
        serde_json::from_slice::<Option<RevokeRequest>>(&body)
            .map_err(|err| ApiError::bad_request(format!("invalid revocation body: {err}")))?
            .unwrap_or_default()
    };
    backend.revoke_mic(&serial, request.reason).await.map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "system",
    summary = "Who the API authenticated the caller as",
    responses(
        (status = 200, description = "The caller.", body = Caller),
    ),
)]
async fn whoami(caller: Option<axum::Extension<Caller>>) -> Result<Json<Caller>, ApiError> {
    caller
        .map(|axum::Extension(c)| Json(c))
        .ok_or_else(|| ApiError::internal("the caller was not recorded"))
}

/// Query of `GET /v1/crl`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrlQuery {
    format: Option<String>,
    issuer: Option<String>,
}

/// The CRLs as PEM (all of them) or DER (one issuer), for standard tooling. Public, like any CRL
/// distribution point.
#[utoipa::path(
    get,
    path = "/v1/crl",
    tag = "trust",
    summary = "The certificate revocation lists this node enforces (public)",
    security(()),
    params(
        ("format" = Option<String>, Query, description = "`pem` (every CRL; the default unless `Accept: application/pkix-crl`) or `der` (one CRL).", pattern = "^(pem|der)$"),
        ("issuer" = Option<String>, Query, description = "Only the CRL of the issuer whose certificate fingerprint (SHA-256, hex) starts with this (at least 8 hex digits)."),
    ),
    responses(
        (status = 200, description = "The CRLs.", content((String = "application/x-pem-file"), (Vec<u8> = "application/pkix-crl"))),
        (status = 400, description = "A bad `format`, or DER asked for while the fleet has several CRLs (add `issuer`).", body = ErrorBody),
        (status = 404, description = "No CRL of that issuer.", body = ErrorBody),
        (status = 503, description = "This node holds no CRL yet (anchors publish one at start).", body = ErrorBody),
    ),
)]
async fn get_crl(
    State(backend): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<CrlQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; /v1/crl accepts format (pem or der) and issuer",
            err.body_text()
        ))
    })?;
    let wants_der = match query.format.as_deref() {
        Some("der") => true,
        Some("pem") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be pem or der, got {other:?}"
            )));
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/pkix-crl")),
    };
    let mut crls = backend.crls();
    if let Some(issuer) = &query.issuer {
        let issuer = issuer.to_ascii_lowercase();
        crls.retain(|(fp, _)| fp.starts_with(&issuer));
        if issuer.len() < 8 || crls.is_empty() {
            return Err(ApiError::not_found(format!(
                "no CRL from an issuer whose fingerprint starts with {issuer:?} (give at least 8 \
                 hex digits)"
            )));
        }
    }
    if crls.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_crl_yet",
            "this node holds no CRL yet; anchors publish one at start, so try again in a moment",
        ));
    }
    if wants_der {
        if crls.len() > 1 {
            let issuers: Vec<&str> = crls.iter().map(|(fp, _)| fp.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "the fleet has {} CRLs (one per anchor) and DER holds one: add ?issuer=<fingerprint> \
                 (one of {issuers:?}) or ask for PEM",
                crls.len()
            )));
        }
        let (_, der) = crls.swap_remove(0);
        return Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response());
    }
    let pem: String = crls.iter().map(|(_, der)| pem_crl(der)).collect();
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

fn pem_crl(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN X509 CRL-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END X509 CRL-----\n");
    out
}

/// Most TLS connections served at once; more wait in the kernel's accept queue.
const MAX_TLS_CONNECTIONS: usize = 4096;

/// Serves `router` over HTTPS until `shutdown` resolves. A client certificate the TLS layer
/// accepted is handed to the router as [`PeerCertificates`] (the authentication middleware
/// re-checks it on every request, so a revocation applies to open connections too).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TLS_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (tcp, _remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "cannot accept an API connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, router, watcher) = (acceptor.clone(), router.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    metrics::counter!("nexus_api_tls_handshakes_failed_total").increment(1);
                    tracing::debug!(error = %err, "API TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("nexus_api_tls_handshakes_failed_total").increment(1);
                    return;
                }
            };
            let peer =
                stream.get_ref().1.peer_certificates().map(|chain| {
                    PeerCertificates(chain.iter().map(|c| c.as_ref().to_vec()).collect())
                });
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    if let Some(peer) = &peer {
                        request.extensions_mut().insert(peer.clone());
                    }
                    tower::ServiceExt::oneshot(router.clone(), request)
                },
            );
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(error = %err, "API connection ended with an error");
            }
        });
    }
    // In-flight requests finish; idle keep-alive connections close.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/anchors",
    tag = "trust",
    summary = "Authorizes a node to become an anchor (the anchor holding the fleet root key)",
    request_body(content = PromoteRequest),
    responses(
        (status = 202, description = "Authorized: the node takes up the role when it next hears of it (seconds).", body = Anchor),
        (status = 400, description = "The body is not valid JSON of this shape; the message names the field.", body = ErrorBody),
        (status = 404, description = "No such node.", body = ErrorBody),
        (status = 409, description = "The node cannot become an anchor now; the message says why.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = ErrorBody),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = ErrorBody),
    ),
)]
async fn promote(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Json<PromoteRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    require_fleet_admin(&caller)?;
    let request = json_body(body, "promotion")?;
    check_node_id(&request.node_id)?;
    let anchor = backend.promote(&request.node_id).await?;
    // Accepted, not done: the node takes up the role when it next hears of it (seconds).
    Ok((StatusCode::ACCEPTED, Json(anchor)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/anchors",
    tag = "trust",
    summary = "Lists the anchors and pending promotions, by node id",
    params(
        crate::openapi::PageParams,
    ),
    responses(
        (status = 200, description = "A page of anchors.", body = Page<Anchor>),
        (status = 400, description = "A bad `limit` or `cursor`, or an unknown query parameter; the message names it.", body = ErrorBody),
    ),
)]
async fn list_anchors(
    State(backend): State<Shared>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Anchor>>, ApiError> {
    let query = query_or_400(query)?;
    paginate(backend.anchors().await?, &query, "anchors", |a| &a.node_id).map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/transparency/mirrors",
    tag = "transparency",
    summary = "The other anchors' transparency logs as this anchor mirrors and checks them",
    responses(
        (status = 200, description = "One entry per other anchor.", body = Vec<crate::wire::TransparencyMirror>),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = ErrorBody),
    ),
)]
async fn transparency_mirrors(
    State(backend): State<Shared>,
) -> Result<Json<Vec<crate::wire::TransparencyMirror>>, ApiError> {
    backend.transparency_mirrors().await.map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/config/status",
    tag = "config",
    summary = "The configuration version spread over the fleet, and this node's documents",
    responses(
        (status = 200, description = "Per document, the states nodes report; a caller confined to a tenant sees the fleet document and its own.", body = crate::openapi::ConfigStatus),
        (status = 503, description = "This node holds no replicated configuration.", body = ErrorBody),
    ),
)]
async fn config_status(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut status = backend.config_status().await?;
    // A caller confined to a tenant sees the fleet document and its own tenant's only, spread
    // over the nodes it may see.
    if let Some(tenant) = caller.and_then(|c| c.0.tenant) {
        auth::confine_config_status(&*backend, &tenant, &mut status);
    }
    Ok(Json(status))
}
