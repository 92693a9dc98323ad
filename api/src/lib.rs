//! The Nexus Cloud HTTP API, served by every node.
//!
//! Parts:
//! - [`wire`]: JSON bodies of `/v1` (separate from internal types).
//! - [`Backend`]: what the node provides to the API. The API never reaches another node: every
//!   read comes from the answering node's local state.
//! - [`router`]: the axum routes, API-key authentication, JSON errors, metrics.
//! - [`cursor`]: opaque, stable pagination cursors.
//!
//! Routes: `GET /v1/nodes`, `GET /v1/nodes/{id}`, `POST /v1/nodes/{id}/drain`,
//! `POST /v1/nodes/{id}/decommission`, `POST /v1/tokens`, `GET /v1/tokens`,
//! `DELETE /v1/tokens/{id}`, `GET /healthz`, `GET /metrics`.

pub mod cursor;
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

use crate::wire::{CreateToken, CreatedToken, ErrorBody, ErrorDetail, Health, Node, Page, Token};

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
    /// True when `api_key` is a valid key of this fleet.
    fn authenticate(&self, api_key: &str) -> bool;
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
    /// Prometheus text exposition of this node's metrics.
    fn metrics(&self) -> String;
}

type Shared = Arc<dyn Backend>;

/// The full router: `/v1` behind API-key auth, `/healthz` and `/metrics` open.
pub fn router(backend: Shared) -> Router {
    let v1 = Router::new()
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}", get(get_node))
        .route("/v1/nodes/{id}/drain", post(drain_node))
        .route("/v1/nodes/{id}/decommission", post(decommission_node))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route_layer(middleware::from_fn_with_state(
            backend.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
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

async fn require_api_key(
    State(backend): State<Shared>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing Authorization header: send `Authorization: Bearer <api key>` (the first admin key is in <data-dir>/admin.key of the fleet's first anchor)",
        )
        .into_response();
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match key {
        Some(key) if backend.authenticate(key) => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the API key is not valid for this fleet",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "malformed Authorization header: expected `Bearer <api key>`",
        )
        .into_response(),
    }
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

async fn list_nodes(
    State(backend): State<Shared>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Node>>, ApiError> {
    let query = query_or_400(query)?;
    paginate(backend.nodes(), &query, "nodes", |n| &n.node_id).map(Json)
}

fn check_node_id(id: &str) -> Result<(), ApiError> {
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

async fn get_node(
    State(backend): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    check_node_id(&id)?;
    backend
        .node(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("node {id} is not known to this node")))
}

async fn drain_node(
    State(backend): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    check_node_id(&id)?;
    backend.drain(&id).await.map(Json)
}

async fn decommission_node(
    State(backend): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    check_node_id(&id)?;
    backend.decommission(&id).await.map(Json)
}

async fn create_token(
    State(backend): State<Shared>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let Json(request) = body.map_err(|err| {
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
    let created = backend.create_token(request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_tokens(
    State(backend): State<Shared>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Token>>, ApiError> {
    let query = query_or_400(query)?;
    paginate(backend.tokens().await?, &query, "tokens", |t| &t.id).map(Json)
}

async fn revoke_token(
    State(backend): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Token>, ApiError> {
    backend.revoke_token(&id).await.map(Json)
}

async fn healthz(State(backend): State<Shared>) -> Response {
    let health = backend.health();
    let status = if health.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

async fn metrics_text(State(backend): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        backend.metrics(),
    )
        .into_response()
}
