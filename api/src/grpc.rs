//! The gRPC API (`nexus.v1.Nexus`, protos in `api/proto/`), for programmatic clients.
//!
//! Parts:
//! - [`proto`]: the messages, the server trait and a client, generated at build time (`build.rs`
//!   compiles the protos with `protox`, so no `protoc` is needed).
//! - [`router`]: the gRPC service and server reflection (v1 and v1alpha) as axum routes, merged
//!   into [`crate::router`]: gRPC shares the REST port and listener (HTTP/2 over TLS with ALPN
//!   `h2`, or prior-knowledge h2c on a plain-HTTP node).
//!
//! Every call goes through the same gate as a REST call, in [`NexusService::call`]: the
//! credentials (`authorization` metadata or the TLS client certificate) through
//! [`auth::authenticate`], the permission through [`auth::require`], the caller's tenant rate
//! limit (the same token bucket REST calls take from), and one audit entry whatever the outcome.
//! Handlers then confine a tenant's caller to its tenant exactly as REST does: another tenant's
//! objects are `NOT_FOUND`. `Watch` serves the node's event journal through
//! [`watch::watch_stream`], as `GET /v1/watch` does (same kinds, filter, ids and resyncs).
//!
//! An [`ApiError`] becomes a [`Status`] whose code follows the HTTP status ([`status_of`]); the
//! REST error code travels in the trailer `nexus-error-code`, and `retry-after` accompanies
//! `RESOURCE_EXHAUSTED`. Every answer carries `x-trace-id`.
//!
//! Reflection is served without credentials: it describes the schema (the same as the protos in
//! the repository), not the fleet.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use axum::http::StatusCode;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use crate::auth::{self, Gate, Permission};
use crate::config::ConfigKind;
use crate::wire::{AuditEntry, Caller};
use crate::{ApiError, PageQuery, PeerCertificates, cursor, watch, wire};

/// Generated from `api/proto/nexus/v1/nexus.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("nexus.v1");
}

use proto::nexus_server::{Nexus, NexusServer};

/// The encoded descriptor set of `nexus.v1` and what it imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nexus_descriptor.bin"));

/// The gRPC routes: `nexus.v1.Nexus` behind `gate`, and server reflection.
pub fn router<S: Clone + Send + Sync + 'static>(gate: Gate) -> axum::Router<S> {
    let nexus = NexusServer::new(NexusService { gate });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
    };
    // The descriptor set is built from our own protos by build.rs: failing to load it is a bug
    // in this crate, never an input error.
    let v1 = reflection()
        .build_v1()
        .expect("the nexus.v1 descriptor set loads");
    let v1alpha = reflection()
        .build_v1alpha()
        .expect("the nexus.v1 descriptor set loads");
    axum::Router::new()
        .route_service(&service_path(&nexus), nexus)
        .route_service(&service_path(&v1), v1)
        .route_service(&service_path(&v1alpha), v1alpha)
}

/// `/<package.Service>/{*method}`: gRPC calls are `POST /<package.Service>/<Method>`.
fn service_path<T: NamedService>(_: &T) -> String {
    format!("/{}/{{*method}}", T::NAME)
}

/// The gRPC status for an API error.
pub fn status_of(error: &ApiError) -> Status {
    let code = match error.status {
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::BAD_REQUEST
        | StatusCode::UNPROCESSABLE_ENTITY
        | StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::InvalidArgument,
        StatusCode::CONFLICT if error.code == "already_exists" => Code::AlreadyExists,
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => Code::Aborted,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        // Not an anchor: the request is fine, this node is the wrong one to send it to.
        StatusCode::MISDIRECTED_REQUEST => Code::FailedPrecondition,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::NOT_IMPLEMENTED | StatusCode::METHOD_NOT_ALLOWED => Code::Unimplemented,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::INTERNAL_SERVER_ERROR => Code::Internal,
        _ => Code::Unknown,
    };
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(error.code) {
        metadata.insert("nexus-error-code", value);
    }
    Status::with_metadata(code, error.message.clone(), metadata)
}

/// The HTTP status equivalent of a gRPC code, for the audit log (which records HTTP statuses).
fn http_status_of(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::FailedPrecondition => 412,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Internal | Code::Unknown | Code::DataLoss => 500,
    }
}

/// The `nexus.v1.Nexus` service over the node's [`crate::Backend`].
#[derive(Clone)]
pub struct NexusService {
    gate: Gate,
}

/// What a call answered, before it becomes a gRPC response.
type Answer<T> = Result<T, ApiError>;

impl NexusService {
    /// Runs one call through the gate: authenticate, check `permission`, take from the
    /// caller's tenant rate limit, run `handler`, audit the outcome under `method` (the RPC
    /// name) and `target` (the REST path of the object, so one audit filter finds both).
    async fn call<T, R, F, Fut>(
        &self,
        method: &'static str,
        permission: Permission,
        target: String,
        request: Request<T>,
        handler: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Caller, T) -> Fut,
        Fut: Future<Output = Answer<R>>,
    {
        let started = Instant::now();
        let trace = trace_id(request.metadata());
        let authorization = request
            .metadata()
            .get("authorization")
            // A value that is not text is a malformed header, which authenticate refuses.
            .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
        let peer = request.extensions().get::<PeerCertificates>().cloned();
        let backend = self.gate.backend.clone();
        let authenticated =
            auth::authenticate(backend.as_ref(), authorization.as_deref(), peer.as_ref()).await;
        let mut seen = None;
        let mut retry_after = None;
        let outcome: Answer<R> = async {
            let caller = authenticated?;
            seen = Some(caller.clone());
            auth::require(&caller, permission)?;
            if let Some(tenant) = &caller.tenant
                && let Some((per_second, burst)) = backend.api_quota(tenant)
                && let Err(wait) = self.gate.limits.check(tenant, per_second, burst)
            {
                metrics::counter!("nexus_api_rate_limited_total", "tenant" => tenant.clone())
                    .increment(1);
                retry_after = Some(wait.max(1));
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "tenant {tenant} is over its API rate ({per_second}/s, burst {burst}) on \
                         this node: retry after {} s, or ask a fleet admin to raise \
                         quotas.api_requests_per_second",
                        wait.max(1)
                    ),
                ));
            }
            if let Some(tenant) = &caller.tenant {
                backend.record_api_call(tenant);
            }
            handler(caller, request.into_inner()).await
        }
        .await;
        let result = outcome.map_err(|e| {
            let mut status = status_of(&e);
            if let Some(wait) = retry_after
                && let Ok(value) = MetadataValue::try_from(wait.to_string())
            {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        });
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        metrics::counter!("nexus_api_grpc_requests_total", "method" => method, "code" => format!("{code:?}"))
            .increment(1);
        metrics::histogram!("nexus_api_grpc_request_duration_seconds", "method" => method)
            .record(started.elapsed().as_secs_f64());
        let status = http_status_of(code);
        let (identity, role, tenant) = match seen {
            Some(c) => (c.identity, c.role, c.tenant),
            None => ("unauthenticated".to_string(), String::new(), None),
        };
        backend.record_audit(AuditEntry {
            id: String::new(),
            time: String::new(),
            time_ms: crate::now_ms(),
            node_id: String::new(),
            identity,
            role,
            tenant,
            action: format!("POST /{}/{method}", NexusServer::<NexusService>::NAME),
            target,
            status,
            result: match status {
                200..=399 => "ok",
                401 | 403 | 429 => "denied",
                _ => "error",
            }
            .to_string(),
            trace_id: trace.clone(),
            duration_us: started.elapsed().as_micros() as u64,
        });
        let trace = MetadataValue::try_from(trace.as_str()).ok();
        match result {
            Ok(answer) => {
                let mut response = Response::new(answer);
                if let Some(trace) = trace {
                    response.metadata_mut().insert("x-trace-id", trace);
                }
                Ok(response)
            }
            Err(mut status) => {
                if let Some(trace) = trace {
                    status.metadata_mut().insert("x-trace-id", trace);
                }
                Err(status)
            }
        }
    }
}

fn trace_id(metadata: &MetadataMap) -> String {
    crate::auth::trace_id(|key| metadata.get(key).and_then(|v| v.to_str().ok()))
}

/// The tenant a request is about, given who asks (REST's rule; an empty string is none).
fn scope(caller: &Caller, asked: &str) -> Answer<Option<String>> {
    crate::config::scope(caller, (!asked.is_empty()).then(|| asked.to_string()))
}

/// A page request as REST's query string would carry it (0: the default size).
fn page_query(limit: u32, cursor: String) -> PageQuery {
    PageQuery {
        limit: (limit != 0).then(|| limit.to_string()),
        cursor: (!cursor.is_empty()).then_some(cursor),
    }
}

/// One page of a configuration collection, with the REST cursor of what follows.
async fn config_page(
    gate: &Gate,
    kind: ConfigKind,
    cursor_kind: &str,
    tenant: Option<String>,
    limit: u32,
    cursor_in: String,
) -> Answer<(Vec<prost_types::Struct>, String, u64)> {
    let query = page_query(limit, cursor_in);
    let limit = query.limit()?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| cursor::decode(cursor_kind, c).map_err(ApiError::bad_request))
        .transpose()?;
    let page = gate.backend.config_list(kind, tenant, after, limit).await?;
    let next = match (page.more, page.items.last()) {
        (true, Some((id, _))) => cursor::encode(cursor_kind, id),
        _ => String::new(),
    };
    let items = page
        .items
        .into_iter()
        .map(|(_, v)| json_to_struct(v))
        .collect();
    Ok((items, next, page.version))
}

fn config_object(object: crate::config::ConfigObject) -> proto::ConfigObject {
    proto::ConfigObject {
        object: Some(json_to_struct(object.value)),
        config_version: object.version,
        quarantined: object.quarantined.unwrap_or_default(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Nexus for NexusService {
    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::Caller>, Status> {
        self.call(
            "WhoAmI",
            Permission::Read,
            "/v1/whoami".into(),
            request,
            |caller, _| async move {
                Ok(proto::Caller {
                    identity: caller.identity,
                    role: caller.role,
                    tenant: caller.tenant,
                })
            },
        )
        .await
    }

    async fn list_nodes(
        &self,
        request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let backend = self.gate.backend.clone();
        self.call(
            "ListNodes",
            Permission::Read,
            "/v1/nodes".into(),
            request,
            |caller, req| async move {
                let nodes = backend
                    .nodes()
                    .into_iter()
                    .filter(|n| caller.tenant.as_ref().is_none_or(|t| *t == n.tenant_id))
                    .collect();
                let page =
                    crate::paginate(nodes, &page_query(req.limit, req.cursor), "nodes", |n| {
                        &n.node_id
                    })?;
                Ok(proto::ListNodesResponse {
                    nodes: page.items.into_iter().map(node).collect(),
                    next_cursor: page.next_cursor.unwrap_or_default(),
                })
            },
        )
        .await
    }

    async fn get_node(
        &self,
        request: Request<proto::GetNodeRequest>,
    ) -> Result<Response<proto::Node>, Status> {
        let backend = self.gate.backend.clone();
        let target = format!("/v1/nodes/{}", request.get_ref().node_id);
        self.call(
            "GetNode",
            Permission::Read,
            target,
            request,
            |caller, req| async move {
                crate::check_node_id(&req.node_id)?;
                backend
                    .node(&req.node_id)
                    // Another tenant's node reads as absent: existence does not leak.
                    .filter(|n| caller.tenant.as_ref().is_none_or(|t| *t == n.tenant_id))
                    .map(node)
                    .ok_or_else(|| {
                        ApiError::not_found(format!(
                            "node {} is not known to this node",
                            req.node_id
                        ))
                    })
            },
        )
        .await
    }

    async fn list_routes(
        &self,
        request: Request<proto::ListRoutesRequest>,
    ) -> Result<Response<proto::ListRoutesResponse>, Status> {
        let gate = self.gate.clone();
        self.call(
            "ListRoutes",
            Permission::Read,
            "/v1/routes".into(),
            request,
            |caller, req| async move {
                let tenant = scope(&caller, &req.tenant)?;
                let (routes, next_cursor, config_version) = config_page(
                    &gate,
                    ConfigKind::Routes,
                    "routes",
                    tenant,
                    req.limit,
                    req.cursor,
                )
                .await?;
                Ok(proto::ListRoutesResponse {
                    routes,
                    next_cursor,
                    config_version,
                })
            },
        )
        .await
    }

    async fn get_route(
        &self,
        request: Request<proto::GetRouteRequest>,
    ) -> Result<Response<proto::ConfigObject>, Status> {
        let backend = self.gate.backend.clone();
        let target = format!("/v1/routes/{}", request.get_ref().id);
        self.call(
            "GetRoute",
            Permission::Read,
            target,
            request,
            |caller, req| async move {
                crate::config::check_id("route policy", &req.id)?;
                let tenant = scope(&caller, &req.tenant)?;
                let object = backend
                    .config_get(ConfigKind::Routes, tenant, req.id)
                    .await?;
                Ok(config_object(object))
            },
        )
        .await
    }

    async fn put_route(
        &self,
        request: Request<proto::PutRouteRequest>,
    ) -> Result<Response<proto::PutRouteResponse>, Status> {
        let backend = self.gate.backend.clone();
        let target = format!("/v1/routes/{}", request.get_ref().id);
        self.call(
            "PutRoute",
            Permission::TenantWrite,
            target,
            request,
            |caller, req| async move {
                crate::config::check_id("route policy", &req.id)?;
                let route = req.route.ok_or_else(|| {
                    ApiError::bad_request("route: required (the route policy to store)")
                })?;
                let mut body = struct_to_json(route, "route")?;
                let map = body
                    .as_object_mut()
                    .expect("a Struct converts to a JSON object");
                match map.get("id") {
                    Some(Value::String(body_id)) if *body_id != req.id => {
                        return Err(ApiError::bad_request(format!(
                            "route.id: the route names {body_id:?} but the request's id is {:?}",
                            req.id
                        )));
                    }
                    Some(Value::String(_)) | None => {}
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "route.id: must be a string, got {other}"
                        )));
                    }
                }
                map.insert("id".into(), Value::String(req.id.clone()));
                map.remove("quarantined");
                let tenant = scope(&caller, &req.tenant)?;
                let (object, created) = backend
                    .config_put(&caller, ConfigKind::Routes, tenant, req.id, body)
                    .await?;
                Ok(proto::PutRouteResponse {
                    route: Some(config_object(object)),
                    created,
                })
            },
        )
        .await
    }

    async fn delete_route(
        &self,
        request: Request<proto::DeleteRouteRequest>,
    ) -> Result<Response<proto::DeleteRouteResponse>, Status> {
        let backend = self.gate.backend.clone();
        let target = format!("/v1/routes/{}", request.get_ref().id);
        self.call(
            "DeleteRoute",
            Permission::TenantWrite,
            target,
            request,
            |caller, req| async move {
                crate::config::check_id("route policy", &req.id)?;
                let tenant = scope(&caller, &req.tenant)?;
                let config_version = backend
                    .config_delete(&caller, ConfigKind::Routes, tenant, req.id.clone())
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("no route policy {:?}", req.id)))?;
                Ok(proto::DeleteRouteResponse { config_version })
            },
        )
        .await
    }

    async fn list_tenants(
        &self,
        request: Request<proto::ListTenantsRequest>,
    ) -> Result<Response<proto::ListTenantsResponse>, Status> {
        let gate = self.gate.clone();
        self.call(
            "ListTenants",
            Permission::Read,
            "/v1/tenants".into(),
            request,
            |caller, req| async move {
                let Some(own) = caller.tenant else {
                    let (tenants, next_cursor, config_version) = config_page(
                        &gate,
                        ConfigKind::Tenants,
                        "tenants",
                        None,
                        req.limit,
                        req.cursor,
                    )
                    .await?;
                    return Ok(proto::ListTenantsResponse {
                        tenants,
                        next_cursor,
                        config_version,
                    });
                };
                // A caller confined to a tenant lists its own tenant record only.
                let query = page_query(req.limit, req.cursor);
                query.limit()?;
                let after = query
                    .cursor
                    .as_deref()
                    .map(|c| cursor::decode("tenants", c).map_err(ApiError::bad_request))
                    .transpose()?;
                let object = if after.as_deref().is_none_or(|a| a < own.as_str()) {
                    match gate
                        .backend
                        .config_get(ConfigKind::Tenants, None, own)
                        .await
                    {
                        Ok(object) => Some(object),
                        Err(e) if e.status == StatusCode::NOT_FOUND => None,
                        Err(e) => return Err(e),
                    }
                } else {
                    None
                };
                Ok(proto::ListTenantsResponse {
                    config_version: object.as_ref().map_or(0, |o| o.version),
                    tenants: object
                        .map(|o| vec![json_to_struct(o.value)])
                        .unwrap_or_default(),
                    next_cursor: String::new(),
                })
            },
        )
        .await
    }

    async fn get_tenant(
        &self,
        request: Request<proto::GetTenantRequest>,
    ) -> Result<Response<proto::ConfigObject>, Status> {
        let backend = self.gate.backend.clone();
        let target = format!("/v1/tenants/{}", request.get_ref().id);
        self.call(
            "GetTenant",
            Permission::Read,
            target,
            request,
            |caller, req| async move {
                crate::config::check_id("tenant", &req.id)?;
                if caller.tenant.as_ref().is_some_and(|own| *own != req.id) {
                    return Err(ApiError::not_found(format!("no tenant {:?}", req.id)));
                }
                let object = backend
                    .config_get(ConfigKind::Tenants, None, req.id)
                    .await?;
                Ok(config_object(object))
            },
        )
        .await
    }

    async fn get_config_status(
        &self,
        request: Request<proto::GetConfigStatusRequest>,
    ) -> Result<Response<proto::ConfigStatus>, Status> {
        let backend = self.gate.backend.clone();
        self.call(
            "GetConfigStatus",
            Permission::Read,
            "/v1/config/status".into(),
            request,
            |caller, _| async move {
                let mut status = backend.config_status().await?;
                // A caller confined to a tenant sees the fleet document and its own tenant's,
                // spread over the nodes it may see.
                if let Some(tenant) = caller.tenant {
                    crate::auth::confine_config_status(&*backend, &tenant, &mut status);
                }
                Ok(proto::ConfigStatus {
                    status: Some(json_to_struct(status)),
                })
            },
        )
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let backend = self.gate.backend.clone();
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
        let peer = request.extensions().get::<PeerCertificates>().cloned();
        self.call(
            "Watch",
            Permission::Read,
            "/v1/watch".into(),
            request,
            |caller, req| async move {
                let kinds = if req.kinds.is_empty() {
                    watch::parse_kinds(None)?
                } else {
                    watch::parse_kinds(Some(&req.kinds.join(",")))?
                };
                let source = backend.events().ok_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_event_journal",
                        "this node keeps no event journal: watch another node",
                    )
                })?;
                let resume = (!req.resume_after.is_empty()).then_some(req.resume_after);
                let items = watch::watch_stream(
                    &*source,
                    resume.as_deref(),
                    watch::WatchFilter::new(kinds, &caller),
                );
                // The stream ends with Unauthenticated once the credentials stop working.
                let lapse = watch::credentials_lapse(backend.clone(), authorization, peer)
                    .map(|(_, message)| Err(Status::unauthenticated(message)));
                let events = futures::stream::select(
                    items.map(|item| Ok(watch_event(item))),
                    lapse,
                )
                .scan(false, |ended, item| {
                    let out = (!*ended).then_some(item);
                    *ended |= out.as_ref().is_some_and(Result::is_err);
                    futures::future::ready(out)
                });
                Ok(Box::pin(events) as WatchStream)
            },
        )
        .await
    }
}

fn watch_event(item: watch::WatchItem) -> proto::WatchEvent {
    match item {
        watch::WatchItem::Event(event) => proto::WatchEvent {
            id: event.id.to_string(),
            kind: event.kind.as_str().to_string(),
            op: match event.op {
                watch::Op::Upsert => "upsert",
                watch::Op::Delete => "delete",
                watch::Op::Status => "status",
            }
            .to_string(),
            object_id: event.object_id.clone(),
            tenant: event.tenant.clone(),
            object: (!event.object.is_null()).then(|| json_to_struct(event.object.clone())),
            resync_reason: String::new(),
            site: event.site.clone(),
        },
        watch::WatchItem::Resync { id, reason } => proto::WatchEvent {
            id: id.to_string(),
            kind: "resync".to_string(),
            resync_reason: reason,
            ..Default::default()
        },
    }
}

fn node(n: wire::Node) -> proto::Node {
    proto::Node {
        node_id: n.node_id,
        hostname: n.hostname,
        role: n.role,
        site: n.site,
        tenant_id: n.tenant_id,
        labels: n.labels.into_iter().collect(),
        addresses: Some(proto::Addresses {
            api: n.addresses.api,
            gossip: n.addresses.gossip,
            quic: n.addresses.quic,
        }),
        status: n.status,
        health: n.health,
        nexlink_version: n.nexlink_version,
        nexroute_version: n.nexroute_version,
        nic_model: n.nic_model,
        nic_backend: n.nic_backend,
        dataplane: n.dataplane.map(|d| proto::DataplaneSummary {
            backend: d.backend,
            device: d.device,
            rx_packets: d.rx_packets,
            tx_packets: d.tx_packets,
            local_packets: d.local_packets,
            drops: d.drops.into_iter().collect(),
            active_flows: d.active_flows,
            connections: d.connections,
            rules: d.rules,
            routes: d.routes,
            policy_generation: d.policy_generation,
            policy_version: d.policy_version,
            at_ms: d.at_ms,
        }),
        firmware_version: n.firmware_version,
        capabilities: n.capabilities,
        trust_level: u32::from(n.trust_level),
        config_version: n.config_version,
        last_heartbeat: n.last_heartbeat,
        created_at: n.created_at,
        updated_at: n.updated_at,
        generation: n.generation,
        certificate_serial: n.certificate_serial,
        certificate_expires_at: n.certificate_expires_at,
        certificate_revoked: n.certificate_revoked,
    }
}

// --- JSON <-> google.protobuf.Struct -----------------------------------------------------------
//
// Configuration objects are JSON in the replicated documents and in REST; gRPC carries them as
// `Struct`. A `Struct` number is a double: whole numbers up to 2^53 convert back to JSON
// integers (the configuration's counts, priorities and millisecond times are all well within),
// anything else stays a float.

/// A JSON value as a `Struct`: an object as itself, anything else under the key `value`.
pub fn json_to_struct(value: Value) -> prost_types::Struct {
    match value {
        Value::Object(map) => prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        },
        other => prost_types::Struct {
            fields: BTreeMap::from([("value".to_string(), json_to_value(other))]),
        },
    }
}

fn json_to_value(value: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(json_to_struct(value)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A `Struct` as a JSON object; `path` names the field in errors.
pub fn struct_to_json(object: prost_types::Struct, path: &str) -> Answer<Value> {
    let mut map = serde_json::Map::new();
    for (key, value) in object.fields {
        let inner = format!("{path}.{key}");
        map.insert(key, value_to_json(value, &inner)?);
    }
    Ok(Value::Object(map))
}

/// Largest integer a double holds exactly.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

fn value_to_json(value: prost_types::Value, path: &str) -> Answer<Value> {
    use prost_types::value::Kind;
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() <= MAX_EXACT => {
            if n < 0.0 {
                Value::from(n as i64)
            } else {
                Value::from(n as u64)
            }
        }
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| {
                ApiError::bad_request(format!("{path}: {n} is not a number JSON can hold"))
            })?,
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| value_to_json(v, &format!("{path}[{i}]")))
                .collect::<Answer<_>>()?,
        ),
        Some(Kind::StructValue(s)) => struct_to_json(s, path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        let cases = [
            (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                Code::Unauthenticated,
            ),
            (StatusCode::FORBIDDEN, "forbidden", Code::PermissionDenied),
            (StatusCode::NOT_FOUND, "not_found", Code::NotFound),
            (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Code::InvalidArgument,
            ),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                Code::InvalidArgument,
            ),
            (StatusCode::CONFLICT, "already_exists", Code::AlreadyExists),
            (StatusCode::CONFLICT, "version_conflict", Code::Aborted),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Code::ResourceExhausted,
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_configuration",
                Code::Unavailable,
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                Code::Internal,
            ),
        ];
        for (http, code, want) in cases {
            let status = status_of(&ApiError::new(http, code, "what to do"));
            assert_eq!(status.code(), want, "{http} {code}");
            assert_eq!(status.message(), "what to do");
            assert_eq!(
                status.metadata().get("nexus-error-code").unwrap(),
                code,
                "the REST code travels along"
            );
        }
    }

    #[test]
    fn struct_roundtrip_keeps_integers_integers() {
        let route = serde_json::json!({
            "id": "r1",
            "priority": 10,
            "weight": -3,
            "ratio": 0.25,
            "created_at": 1_764_590_000_000_u64,
            "enabled": true,
            "note": null,
            "match": {"message_types": [7, 8], "stream_modes": ["RO"]},
        });
        let back = struct_to_json(json_to_struct(route.clone()), "route").unwrap();
        assert_eq!(back, route);
        assert_eq!(back.to_string(), route.to_string(), "no 10.0 for 10");
    }

    #[test]
    fn bad_numbers_name_the_field() {
        let mut s = json_to_struct(serde_json::json!({"match": {"weights": [1]}}));
        let prost_types::value::Kind::StructValue(m) =
            s.fields.get_mut("match").unwrap().kind.as_mut().unwrap()
        else {
            panic!("match is an object");
        };
        m.fields.insert(
            "ttl".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(f64::INFINITY)),
            },
        );
        let err = struct_to_json(s, "route").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(
            err.message.starts_with("route.match.ttl:"),
            "{}",
            err.message
        );
    }

    #[test]
    fn confined_callers_get_their_tenant_and_never_another() {
        let confined = Caller {
            identity: "api-key:ab".into(),
            role: "viewer".into(),
            tenant: Some("acme".into()),
        };
        assert_eq!(scope(&confined, "").unwrap(), Some("acme".into()));
        assert_eq!(scope(&confined, "acme").unwrap(), Some("acme".into()));
        assert_eq!(
            status_of(&scope(&confined, "other").unwrap_err()).code(),
            Code::NotFound
        );
        let admin = Caller {
            identity: "api-key:cd".into(),
            role: "fleet-admin".into(),
            tenant: None,
        };
        assert_eq!(scope(&admin, "other").unwrap(), Some("other".into()));
        assert_eq!(scope(&admin, "").unwrap(), None);
    }

    #[test]
    fn trace_ids_are_taken_when_valid() {
        let mut m = MetadataMap::new();
        let fresh = trace_id(&m);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, trace_id(&m));
        m.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(trace_id(&m), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
