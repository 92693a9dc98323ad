//! Who may call what (NCC-API-003/004/006): authentication, the permission table, per-tenant
//! rate limits, and the audit record of every call (NCC-API-005).
//!
//! **Credentials**, tried in this order:
//! - `Authorization: Bearer <token>`: a JWT (three base64url parts) is an OIDC token, checked
//!   against the issuer its tenant configured ([`Backend::authenticate_jwt`]); anything else is
//!   an API key ([`Backend::authenticate_key`]).
//! - the TLS client certificate: a MIC of this fleet, role `node`, read-only in its tenant.
//!
//! **Roles**: `fleet-admin` (no tenant), and per tenant `admin`, `operator`, `viewer`; `node`.
//! Every route has one [`Permission`] in [`permission`]; a route missing from the table needs
//! a fleet admin, so a new route is closed until someone decides otherwise. Handlers then
//! confine a tenant's caller to its tenant: another tenant's objects read as absent (404, not
//! 403), so existence does not leak.
//!
//! | permission | who | routes |
//! |---|---|---|
//! | read | every authenticated caller | `GET` of nodes, routes, firmware, tenants and their usage (own), fleet policies and settings, config status and snapshots, transparency (signed tree heads, proofs), anchors, whoami, watch |
//! | tenant-write | operator, admin, fleet admin | writes of routes, site routes, firmware targets; snapshots and rollback; drain |
//! | tenant-admin | admin, fleet admin | API keys, OIDC, audit, join tokens, MICs (list, revoke), decommission |
//! | fleet-admin | fleet admin | tenants (create, change, delete), fleet policies and settings, anchors, issuing MICs from CSRs, the transparency log's entries (every tenant's certificates) |

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::wire::{AuditEntry, Caller};
use crate::{ApiError, Backend, PeerCertificates, Shared};

/// What a route needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    /// Any authenticated caller (results are confined to its tenant).
    Read,
    /// Changes to a tenant's configuration: operator and up.
    TenantWrite,
    /// Credentials, audit, membership of a tenant: admin and up.
    TenantAdmin,
    /// The fleet itself: fleet admin only.
    FleetAdmin,
}

impl Permission {
    /// The roles that hold it, for error messages.
    fn holders(self) -> &'static str {
        match self {
            Permission::Read => "any authenticated caller",
            Permission::TenantWrite => "operator, admin or fleet-admin",
            Permission::TenantAdmin => "admin or fleet-admin",
            Permission::FleetAdmin => "fleet-admin",
        }
    }
}

/// The permission `method` on the route template `route` (as axum matched it) needs.
pub fn permission(method: &Method, route: &str) -> Permission {
    use Permission::*;
    let read = *method == Method::GET || *method == Method::HEAD;
    let admin_reads = [
        "/v1/keys",
        "/v1/keys/{id}",
        "/v1/audit",
        "/v1/tenants/{id}/oidc",
        "/v1/tokens",
        "/v1/mics",
        "/v1/mics/{serial}",
    ];
    // The transparency log's entries name every tenant's nodes and certificates: a tenant's
    // caller checks its own with inclusion proofs (by serial) and signed tree heads instead.
    let fleet_reads = ["/v1/transparency/entries"];
    if read {
        return if fleet_reads.contains(&route) {
            FleetAdmin
        } else if admin_reads.contains(&route) {
            TenantAdmin
        } else {
            Read
        };
    }
    match route {
        "/v1/routes"
        | "/v1/routes/{id}"
        | "/v1/sites/{site}/routes"
        | "/v1/sites/{site}/routes/{id}"
        | "/v1/firmware/targets"
        | "/v1/firmware/targets/{id}"
        | "/v1/config/snapshots"
        | "/v1/config/snapshots/{id}/rollback"
        | "/v1/nodes/{id}/drain"
        | "/v1/nodes/{id}/labels" => TenantWrite,
        "/v1/keys"
        | "/v1/keys/{id}"
        | "/v1/tenants/{id}/oidc"
        | "/v1/tokens"
        | "/v1/tokens/{id}"
        | "/v1/mics/{serial}/revoke"
        | "/v1/nodes/{id}/decommission" => TenantAdmin,
        _ => FleetAdmin,
    }
}

/// The permissions `role` holds.
fn grants(role: &str, permission: Permission) -> bool {
    match role {
        "fleet-admin" => true,
        "admin" => permission <= Permission::TenantAdmin,
        "operator" => permission <= Permission::TenantWrite,
        "viewer" | "node" => permission == Permission::Read,
        _ => false,
    }
}

/// Refuses `caller` unless its role holds `permission` (403 naming the roles that do).
pub fn require(caller: &Caller, permission: Permission) -> Result<(), ApiError> {
    if grants(&caller.role, permission) {
        return Ok(());
    }
    let hint = if caller.role == "node" {
        "; a node certificate only reads its tenant's state: use an API key for changes"
    } else {
        ""
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "{} has role {}; this needs {}{hint}",
            caller.identity,
            caller.role,
            permission.holders()
        ),
    ))
}

/// Narrows a configuration status (`GET /v1/config/status`, gRPC `GetConfigStatus`) to what a
/// caller of `tenant` may see: the fleet document and its own tenant's, each spread over the
/// nodes it may see only (its tenant's, and the anchors, which `GET /v1/anchors` shows every
/// caller). The spread is counted again over those nodes, so it says neither which nor how many
/// nodes other tenants have.
pub fn confine_config_status(backend: &dyn Backend, tenant: &str, status: &mut serde_json::Value) {
    let visible: HashSet<String> = backend
        .nodes()
        .into_iter()
        .filter(|n| n.tenant_id == tenant || n.role == "anchor")
        .map(|n| n.node_id)
        .collect();
    confine_status_to(status, tenant, &visible);
}

/// [`confine_config_status`] with the nodes the caller may see.
fn confine_status_to(status: &mut serde_json::Value, tenant: &str, visible: &HashSet<String>) {
    use serde_json::Value;
    let own = format!("tenant/{tenant}");
    for list in ["documents", "local"] {
        if let Some(items) = status.get_mut(list).and_then(Value::as_array_mut) {
            items.retain(|d| d["document"] == "fleet" || d["document"] == own.as_str());
        }
    }
    let Some(documents) = status.get_mut("documents").and_then(Value::as_array_mut) else {
        return;
    };
    for document in documents {
        let Some(states) = document.get_mut("states").and_then(Value::as_array_mut) else {
            continue;
        };
        for state in states.iter_mut() {
            let kept: Vec<Value> = state["node_ids"]
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .filter(|id| id.as_str().is_some_and(|id| visible.contains(id)))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            state["nodes"] = kept.len().into();
            state["node_ids"] = Value::Array(kept);
        }
        states.retain(|s| s["nodes"] != 0);
        let converged = states.len() == 1;
        document["converged"] = converged.into();
    }
}

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

/// A bearer token shaped like a JWT: three non-empty base64url parts.
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Authenticates a request's credentials (see the module docs for the order).
pub async fn authenticate(
    backend: &dyn Backend,
    authorization: Option<&str>,
    peer: Option<&PeerCertificates>,
) -> Result<Caller, ApiError> {
    if let Some(value) = authorization {
        let Some(token) = value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Err(unauthenticated(
                "malformed Authorization header: expected `Bearer <api key or OIDC token>`",
            ));
        };
        if looks_like_jwt(token) {
            return backend
                .authenticate_jwt(token)
                .await
                .map_err(|e| unauthenticated(format!("the bearer token was refused: {e}")));
        }
        return backend.authenticate_key(token).ok_or_else(|| {
            unauthenticated(
                "the API key is not valid here: it is unknown, revoked or expired (tenant keys \
                 work on their tenant's nodes and on anchors)",
            )
        });
    }
    match peer {
        Some(PeerCertificates(chain)) => backend
            .authenticate_certificate(chain)
            .map_err(|e| unauthenticated(format!("client certificate refused: {e}"))),
        None => Err(unauthenticated(
            "no credentials: send `Authorization: Bearer <api key>` (the first admin key is in \
             <data-dir>/admin.key of the fleet's first anchor) or connect with a client \
             certificate (a MIC of this fleet)",
        )),
    }
}

/// A tenant's bucket and the quota `(per second, burst)` it was made for.
type Bucket = ((u64, u64), Arc<DefaultDirectRateLimiter>);

/// Per-tenant token buckets for API calls on this node.
#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimits {
    /// Takes one call of `tenant` under the quota `(per_second, burst)`; `Err(seconds)` to
    /// wait when the bucket is empty. A changed quota starts a fresh bucket.
    pub fn check(&self, tenant: &str, per_second: u64, burst: u64) -> Result<(), u64> {
        let limiter = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            match buckets.get(tenant) {
                Some((quota, limiter)) if *quota == (per_second, burst) => limiter.clone(),
                _ => {
                    let rate = NonZeroU32::new(per_second.clamp(1, u32::MAX as u64) as u32)
                        .unwrap_or(NonZeroU32::MIN);
                    let size = NonZeroU32::new(burst.clamp(1, u32::MAX as u64) as u32)
                        .unwrap_or(NonZeroU32::MIN);
                    let limiter = Arc::new(RateLimiter::direct(
                        Quota::per_second(rate).allow_burst(size),
                    ));
                    buckets.insert(tenant.to_string(), ((per_second, burst), limiter.clone()));
                    limiter
                }
            }
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// State of the authenticating middleware.
#[derive(Clone)]
pub struct Gate {
    /// The node.
    pub backend: Shared,
    /// Rate limits of this node's API.
    pub limits: Arc<RateLimits>,
}

/// Trace id of a request: a valid incoming `traceparent` (W3C) or `x-trace-id` (32 hex), else
/// a new random one. `header` reads a request header (REST) or metadata entry (gRPC).
pub(crate) fn trace_id<'a>(header: impl Fn(&str) -> Option<&'a str>) -> String {
    let hex32 = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tp) = header("traceparent") {
        let parts: Vec<&str> = tp.split('-').collect();
        if parts.len() == 4 && hex32(parts[1]) && parts[1].bytes().any(|b| b != b'0') {
            return parts[1].to_ascii_lowercase();
        }
    }
    if let Some(id) = header("x-trace-id")
        && hex32(id)
    {
        return id.to_ascii_lowercase();
    }
    format!("{:032x}", rand::random::<u128>())
}

/// Routes whose calls are not audited: probes and scrapes, which carry no caller.
fn unaudited(route: &str) -> bool {
    matches!(route, "/healthz" | "/metrics" | "/v1/openapi.json")
}

/// The middleware in front of every `/v1` route: authenticate, check the route's permission,
/// apply the caller's tenant rate limit, run the handler, and audit the call whatever its
/// outcome. Every response carries `x-trace-id`.
pub async fn gate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let headers = request.headers();
    let trace = trace_id(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let method = request.method().clone();
    let target = request.uri().path().to_string();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let peer = request.extensions().get::<PeerCertificates>().cloned();
    let authenticated = authenticate(gate.backend.as_ref(), authorization, peer.as_ref()).await;
    let mut caller_seen = None;
    let outcome: Result<Response, ApiError> = async {
        let caller = authenticated?;
        caller_seen = Some(caller.clone());
        let route = route.as_deref().unwrap_or("unmatched");
        require(&caller, permission(&method, route))?;
        if let Some(tenant) = &caller.tenant
            && let Some((per_second, burst)) = gate.backend.api_quota(tenant)
            && let Err(wait) = gate.limits.check(tenant, per_second, burst)
        {
            metrics::counter!("nexus_api_rate_limited_total", "tenant" => tenant.clone())
                .increment(1);
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "tenant {tenant} is over its API rate ({per_second}/s, burst {burst}) on this \
                     node: retry after {wait} s, or ask a fleet admin to raise \
                     quotas.api_requests_per_second"
                ),
            )
            .into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&wait.max(1).to_string()).expect("digits"),
            );
            return Ok(response);
        }
        if let Some(tenant) = crate::usage::billed_tenant(&caller, request.uri().query()) {
            gate.backend.record_api_call(&tenant);
        }
        request.extensions_mut().insert(caller);
        Ok(next.run(request).await)
    }
    .await;
    let mut response = outcome.unwrap_or_else(IntoResponse::into_response);
    if let Ok(value) = HeaderValue::from_str(&trace) {
        response.headers_mut().insert("x-trace-id", value);
    }
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    if !unaudited(&route) {
        let status = response.status().as_u16();
        let result = match status {
            200..=399 => "ok",
            401 | 403 | 429 => "denied",
            _ => "error",
        };
        let (identity, role, tenant) = match caller_seen {
            Some(c) => (c.identity, c.role, c.tenant),
            None => ("unauthenticated".to_string(), String::new(), None),
        };
        gate.backend.record_audit(AuditEntry {
            id: String::new(),
            time: String::new(),
            time_ms: crate::now_ms(),
            node_id: String::new(),
            identity,
            role,
            tenant,
            action: format!("{method} {route}"),
            target,
            status,
            result: result.to_string(),
            trace_id: trace,
            duration_us: started.elapsed().as_micros() as u64,
        });
    }
    response
}

/// The metrics text without the series of tenants other than `own` (all tenants' when `own` is
/// `None`): a series names a tenant by a `tenant="…"` label or `document="tenant/…"`.
pub fn confine_metrics(text: &str, own: Option<&str>) -> String {
    let foreign = |labels: &str, key: &str| {
        let needle = format!("{key}=\"");
        labels.match_indices(&needle).any(|(at, _)| {
            let start = at + needle.len();
            // A label key, not the end of another label's name (`xtenant="`).
            let whole = at == 0 || matches!(labels.as_bytes()[at - 1], b'{' | b',');
            let value = labels[start..].split('"').next().unwrap_or("");
            let tenant = if key == "document" {
                match value.strip_prefix("tenant/") {
                    Some(t) => t,
                    None => return false,
                }
            } else {
                value
            };
            whole && !tenant.is_empty() && Some(tenant) != own
        })
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let labels = match (line.find('{'), line.find('}')) {
            (Some(a), Some(b)) if !line.starts_with('#') && a < b => &line[a..=b],
            _ => "",
        };
        if foreign(labels, "tenant") || foreign(labels, "document") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_of_other_tenants_are_left_out() {
        let text = "# TYPE a counter\na{tenant=\"acme\"} 1\na{tenant=\"globex\"} 2\nb{document=\"tenant/acme\"} 3\nb{document=\"fleet\"} 4\nc 5\nd{xtenant=\"acme\"} 6\n";
        let anonymous = confine_metrics(text, None);
        assert_eq!(
            anonymous,
            "# TYPE a counter\nb{document=\"fleet\"} 4\nc 5\nd{xtenant=\"acme\"} 6\n"
        );
        let globex = confine_metrics(text, Some("globex"));
        assert!(globex.contains("a{tenant=\"globex\"} 2"), "{globex}");
        assert!(
            !globex.contains("acme\"} 1") && !globex.contains("tenant/acme"),
            "{globex}"
        );
    }
    use super::*;

    fn caller(role: &str) -> Caller {
        Caller {
            identity: "api-key:…abcd".into(),
            role: role.into(),
            tenant: (role != "fleet-admin").then(|| "acme".into()),
        }
    }

    #[test]
    fn roles_hold_what_the_table_says() {
        let all = [
            Permission::Read,
            Permission::TenantWrite,
            Permission::TenantAdmin,
            Permission::FleetAdmin,
        ];
        let held = |role: &str| -> Vec<Permission> {
            all.into_iter()
                .filter(|p| require(&caller(role), *p).is_ok())
                .collect()
        };
        assert_eq!(held("fleet-admin"), all.to_vec());
        assert_eq!(held("admin"), all[..3].to_vec());
        assert_eq!(held("operator"), all[..2].to_vec());
        assert_eq!(held("viewer"), all[..1].to_vec());
        assert_eq!(held("node"), all[..1].to_vec());
        assert_eq!(held("made-up"), Vec::<Permission>::new());
        let err = require(&caller("viewer"), Permission::TenantWrite).unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert!(
            err.message.contains("operator, admin or fleet-admin"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_routes_need_a_fleet_admin() {
        assert_eq!(
            permission(&Method::POST, "/v1/new-thing"),
            Permission::FleetAdmin
        );
        assert_eq!(permission(&Method::GET, "/v1/routes"), Permission::Read);
        assert_eq!(
            permission(&Method::GET, "/v1/audit"),
            Permission::TenantAdmin
        );
        assert_eq!(
            permission(&Method::DELETE, "/v1/routes/{id}"),
            Permission::TenantWrite
        );
        assert_eq!(
            permission(&Method::PUT, "/v1/tenants/{id}"),
            Permission::FleetAdmin
        );
        // Log entries list every tenant's certificates; heads and proofs name none.
        assert_eq!(
            permission(&Method::GET, "/v1/transparency/entries"),
            Permission::FleetAdmin
        );
        assert_eq!(
            permission(&Method::GET, "/v1/transparency/proof/inclusion"),
            Permission::Read
        );
    }

    #[test]
    fn a_tenants_config_status_names_only_the_nodes_it_may_see() {
        let mut status = serde_json::json!({
            "documents": [
                {"document": "fleet", "converged": false, "states": [
                    {"version": 9, "nodes": 3, "node_ids": ["anchor", "mine", "theirs"]},
                    {"version": 8, "nodes": 1, "node_ids": ["theirs-too"]},
                ]},
                {"document": "tenant/acme", "converged": true, "states": [
                    {"version": 4, "nodes": 2, "node_ids": ["anchor", "mine"]},
                ]},
                {"document": "tenant/globex", "converged": true, "states": [
                    {"version": 2, "nodes": 2, "node_ids": ["anchor", "theirs"]},
                ]},
            ],
            "local": [{"document": "fleet"}, {"document": "tenant/globex"}],
        });
        let visible: HashSet<String> = ["anchor", "mine"].map(String::from).into();
        confine_status_to(&mut status, "acme", &visible);
        assert_eq!(
            status,
            serde_json::json!({
                "documents": [
                    {"document": "fleet", "converged": true, "states": [
                        {"version": 9, "nodes": 2, "node_ids": ["anchor", "mine"]},
                    ]},
                    {"document": "tenant/acme", "converged": true, "states": [
                        {"version": 4, "nodes": 2, "node_ids": ["anchor", "mine"]},
                    ]},
                ],
                "local": [{"document": "fleet"}],
            })
        );
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOi.eyJzdWIi.c2ln"));
        assert!(!looks_like_jwt("nxk_abcdef"));
        assert!(!looks_like_jwt("a..b"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }

    #[test]
    fn trace_ids() {
        let fresh = trace_id(|_| None);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, trace_id(|_| None));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let given = trace_id(|name| (name == "traceparent").then_some(tp));
        assert_eq!(given, "4bf92f3577b34da6a3ce929d0e0e4736");
        let zero = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
        assert_ne!(
            trace_id(|name| (name == "traceparent").then_some(zero.as_str())),
            "0".repeat(32)
        );
    }

    #[test]
    fn rate_limit_refuses_past_the_burst_and_says_how_long() {
        let limits = RateLimits::default();
        for _ in 0..3 {
            assert!(limits.check("acme", 1, 3).is_ok());
        }
        let wait = limits.check("acme", 1, 3).unwrap_err();
        assert!((1..=1).contains(&wait), "{wait}");
        // Another tenant has its own bucket; a new quota a fresh one.
        assert!(limits.check("other", 1, 1).is_ok());
        assert!(limits.check("acme", 2, 5).is_ok());
    }
}
