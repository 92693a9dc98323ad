//! Replicated configuration under `/v1`: route policies, site-scoped route policies, firmware
//! targets, tenants, snapshots and rollback.
//!
//! | route | |
//! |---|---|
//! | `GET/POST /v1/routes`, `GET/PUT/PATCH/DELETE /v1/routes/{id}` | a tenant's route policies (`?tenant=`, default the node's) |
//! | `GET/POST /v1/sites/{site}/routes`, `GET/PUT/PATCH/DELETE …/{id}` | route policies scoped to one site |
//! | `GET/POST /v1/firmware/targets`, `GET/PUT/PATCH/DELETE …/{id}` | firmware targets |
//! | `GET/POST /v1/tenants`, `GET/PUT/PATCH/DELETE /v1/tenants/{id}` | tenants (writes on anchors) |
//! | `GET/POST /v1/fleet/policies`, `GET/PUT/PATCH/DELETE …/{id}` | fleet-wide route policies (writes on anchors) |
//! | `GET/PUT/PATCH /v1/fleet/settings` | fleet settings (writes on anchors) |
//! | `GET/POST /v1/config/snapshots`, `GET …/{id}`, `POST …/{id}/rollback` | snapshots |
//!
//! Every answer carries the document's version in `x-config-version`. Lists serve the
//! *effective* objects (quarantined ones are left out and listed at `GET /v1/config/status`);
//! a single `GET` serves the object as stored, with `quarantined` reasons when it is held back.
//! `PATCH` takes a JSON merge patch (RFC 7396). Writes are acknowledged only once the change is
//! on this node's disk.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::wire::Caller;
use crate::{ApiError, Shared, cursor, json_body};

/// Which collection a request is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    /// Route policies of a tenant.
    Routes,
    /// Route policies scoped to the named site.
    SiteRoutes(String),
    /// Firmware targets of a tenant.
    FirmwareTargets,
    /// Tenants (the fleet document).
    Tenants,
    /// Fleet-wide route policies (the fleet document).
    FleetPolicies,
}

impl ConfigKind {
    fn cursor_kind(&self) -> &'static str {
        match self {
            ConfigKind::Routes => "routes",
            ConfigKind::SiteRoutes(_) => "site-routes",
            ConfigKind::FirmwareTargets => "firmware-targets",
            ConfigKind::Tenants => "tenants",
            ConfigKind::FleetPolicies => "fleet-policies",
        }
    }

    fn location(&self, id: &str) -> String {
        match self {
            ConfigKind::Routes => format!("/v1/routes/{id}"),
            ConfigKind::SiteRoutes(site) => format!("/v1/sites/{site}/routes/{id}"),
            ConfigKind::FirmwareTargets => format!("/v1/firmware/targets/{id}"),
            ConfigKind::Tenants => format!("/v1/tenants/{id}"),
            ConfigKind::FleetPolicies => format!("/v1/fleet/policies/{id}"),
        }
    }

    /// The word for one object in messages.
    pub fn noun(&self) -> &'static str {
        match self {
            ConfigKind::Routes | ConfigKind::SiteRoutes(_) => "route policy",
            ConfigKind::FirmwareTargets => "firmware target",
            ConfigKind::Tenants => "tenant",
            ConfigKind::FleetPolicies => "fleet policy",
        }
    }
}

/// A page of configuration objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigPage {
    /// `(id, object)` in id order.
    pub items: Vec<(String, Value)>,
    /// Whether more objects follow the last one.
    pub more: bool,
    /// The document's config version.
    pub version: u64,
}

/// One configuration object as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigObject {
    /// The object.
    pub value: Value,
    /// The document's config version.
    pub version: u64,
    /// Why it is not applied, when it is quarantined.
    pub quarantined: Option<Vec<String>>,
}

/// `?limit=&cursor=&tenant=` of configuration lists.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
    tenant: Option<String>,
}

/// `?tenant=` of single-object routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>, accepted: &str) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; this route accepts {accepted}",
            err.body_text()
        ))
    })
}

pub(crate) fn caller_of(caller: Option<axum::Extension<Caller>>) -> Caller {
    caller.map(|c| c.0).unwrap_or(Caller {
        identity: String::new(),
        role: String::new(),
        tenant: None,
    })
}

/// The tenant a request is about, given who asks: a caller confined to a tenant sees only its
/// own, and another tenant's objects read as absent (404), so existence does not leak.
pub(crate) fn scope(caller: &Caller, asked: Option<String>) -> Result<Option<String>, ApiError> {
    if let Some(asked) = asked.as_deref().filter(|t| !t.is_empty()) {
        check_tenant_name("tenant", asked)?;
    }
    match (&caller.tenant, asked) {
        (Some(own), Some(asked)) if *own != asked => Err(ApiError::not_found(format!(
            "no tenant {asked:?} visible to {}",
            caller.identity
        ))),
        (Some(own), _) => Ok(Some(own.clone())),
        (None, asked) => Ok(asked.filter(|t| !t.is_empty())),
    }
}

/// Refuses whole numbers beyond the signed 64-bit range anywhere in `value` (400 naming the
/// field): the API documents integers as int64, and many JSON clients cannot hold more.
fn check_integers(path: &str, value: &Value) -> Result<(), ApiError> {
    match value {
        Value::Number(n) if n.is_u64() && n.as_i64().is_none() => Err(ApiError::bad_request(
            format!("{path}: {n} is too large (at most {})", i64::MAX),
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_integers(&format!("{path}[{i}]"), v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let field = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            check_integers(&field, v)
        }),
        _ => Ok(()),
    }
}

/// A tenant name (1..=63 letters, digits, '-', '_' or '.'), or a 400 naming `param`.
fn check_tenant_name(param: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{param}: {name:?} is not a tenant name: use 1..=63 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A document name (`fleet` or `tenant/<name>`), or a 400 naming `param`.
fn check_document(param: &str, doc: &str) -> Result<(), ApiError> {
    match doc.strip_prefix("tenant/") {
        _ if doc == "fleet" => Ok(()),
        Some(tenant) if check_tenant_name(param, tenant).is_ok() => Ok(()),
        _ => Err(ApiError::bad_request(format!(
            "{param}: {doc:?} is not a document: use \"fleet\" or \"tenant/<tenant name>\""
        ))),
    }
}

pub(crate) fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {id:?} is not a valid id: use 1..=64 letters, digits, '-', '_' or '.'"
        )))
    }
}

tokio::task_local! {
    /// The request's `If-Match` header, for the write handlers (set by [`if_match`]).
    static IF_MATCH: Option<String>;
}

/// Middleware of the configuration routes: makes `If-Match` available to the write handlers.
pub(crate) async fn if_match(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let wanted = request
        .headers()
        .get(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{0}").trim().to_string());
    IF_MATCH.scope(wanted, next.run(request)).await
}

/// Runs `write` as if the request had no `If-Match` (writes a handler makes on its own behalf,
/// beside the object the caller named).
pub(crate) async fn without_if_match<F: std::future::Future>(write: F) -> F::Output {
    IF_MATCH.scope(None, write).await
}

/// The entity tag of a stored object: the first 128 bits of the SHA-256 of its JSON (the same
/// on every node and build, so tags from any node compare).
pub fn etag(value: &Value) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(value.to_string().as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Refuses a write whose `If-Match` does not name the object's current entity tag (409,
/// like a version conflict): `*` needs the object to exist, a list of tags any of them.
async fn check_if_match(
    backend: &Shared,
    kind: &ConfigKind,
    tenant: &Option<String>,
    id: &str,
) -> Result<(), ApiError> {
    let Some(wanted) = IF_MATCH.try_with(Clone::clone).ok().flatten() else {
        return Ok(());
    };
    let current = match backend
        .config_get(kind.clone(), tenant.clone(), id.to_string())
        .await
    {
        Ok(object) => Some(etag(&object.value)),
        Err(e) if e.status == StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e),
    };
    let matches = match &current {
        None => false,
        Some(_) if wanted == "*" => true,
        Some(tag) => wanted
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == tag),
    };
    if matches {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "version_conflict",
        match current {
            Some(tag) => format!(
                "If-Match {wanted} does not match the {} {id:?} as it is now ({tag}): read it \
                 again (GET {}) and retry with its ETag",
                kind.noun(),
                kind.location(id)
            ),
            None => format!(
                "If-Match {wanted} names a {} {id:?} that does not exist",
                kind.noun()
            ),
        },
    ))
}

fn versioned(status: StatusCode, version: u64, body: Value, location: Option<String>) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::HeaderName::from_static("x-config-version"),
        header::HeaderValue::from(version),
    );
    if let Some(location) = location
        && let Ok(value) = header::HeaderValue::from_str(&location)
    {
        headers.insert(header::LOCATION, value);
    }
    response
}

fn with_quarantine(object: ConfigObject) -> Value {
    let mut value = object.value;
    if let (Some(reasons), Some(map)) = (object.quarantined, value.as_object_mut()) {
        map.insert("quarantined".into(), Value::from(reasons));
    }
    value
}

async fn list(
    backend: Shared,
    kind: ConfigKind,
    caller: Caller,
    q: ListQuery,
) -> Result<Response, ApiError> {
    let limit = crate::PageQuery {
        limit: q.limit.clone(),
        cursor: None,
    }
    .limit()?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| cursor::decode(kind.cursor_kind(), c).map_err(ApiError::bad_request))
        .transpose()?;
    let tenant = scope(&caller, q.tenant)?;
    // A caller confined to a tenant lists only its own tenant record.
    if kind == ConfigKind::Tenants
        && let Some(own) = &caller.tenant
    {
        let mine = after.as_deref().is_none_or(|a| a < own.as_str());
        let object = if mine {
            match backend.config_get(kind.clone(), None, own.clone()).await {
                Ok(object) => Some(object),
                Err(e) if e.status == StatusCode::NOT_FOUND => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let version = object.as_ref().map_or(0, |o| o.version);
        let body = serde_json::json!({
            "items": object.map(|o| vec![o.value]).unwrap_or_default(),
            "next_cursor": null,
            "config_version": version,
        });
        return Ok(versioned(StatusCode::OK, version, body, None));
    }
    let page = backend
        .config_list(kind.clone(), tenant, after, limit)
        .await?;
    let items: Vec<(String, Value)> = page.items;
    let next_cursor = if page.more {
        items
            .last()
            .map(|(id, _)| cursor::encode(kind.cursor_kind(), id))
    } else {
        None
    };
    let body = serde_json::json!({
        "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
        "config_version": page.version,
    });
    Ok(versioned(StatusCode::OK, page.version, body, None))
}

async fn get_one(
    backend: Shared,
    kind: ConfigKind,
    caller: Caller,
    tenant: Option<String>,
    id: String,
) -> Result<Response, ApiError> {
    check_id(kind.noun(), &id)?;
    if kind == ConfigKind::Tenants
        && let Some(own) = &caller.tenant
        && *own != id
    {
        return Err(ApiError::not_found(format!("no tenant {id:?}")));
    }
    let tenant = scope(&caller, tenant)?;
    let object = backend.config_get(kind, tenant, id).await?;
    let version = object.version;
    let tag = etag(&object.value);
    Ok(tagged(
        versioned(StatusCode::OK, version, with_quarantine(object), None),
        &tag,
    ))
}

fn tagged(mut response: Response, tag: &str) -> Response {
    if let Ok(value) = header::HeaderValue::from_str(tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

pub(crate) async fn put_one(
    backend: Shared,
    kind: ConfigKind,
    caller: Caller,
    tenant: Option<String>,
    id: String,
    mut body: Value,
) -> Result<Response, ApiError> {
    check_id(kind.noun(), &id)?;
    check_integers("", &body)?;
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the body must be a JSON object (a {})",
            kind.noun()
        )));
    };
    // Serde reads a struct from a JSON array too (by position): refuse that for the nested
    // objects, as for the body.
    let nested: &[&str] = match kind {
        ConfigKind::Tenants => &["quotas"],
        ConfigKind::FirmwareTargets => &["selector"],
        _ => &["match", "action"],
    };
    for field in nested {
        if let Some(value) = map.get(*field)
            && !value.is_object()
        {
            return Err(ApiError::bad_request(format!(
                "{field}: must be a JSON object, got {value}"
            )));
        }
    }
    match map.get("id") {
        Some(Value::String(body_id)) if *body_id != id => {
            return Err(ApiError::bad_request(format!(
                "id: the body names {body_id:?} but the path names {id:?}"
            )));
        }
        Some(Value::String(_)) | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "id: must be a string, got {other}"
            )));
        }
    }
    if kind == ConfigKind::Tenants {
        // A tenant's id is its key in the fleet document, not a field of the record.
        map.remove("id");
    } else {
        map.insert("id".into(), Value::String(id.clone()));
    }
    map.remove("quarantined");
    let tenant = scope(&caller, tenant)?;
    check_if_match(&backend, &kind, &tenant, &id).await?;
    let (object, created) = backend
        .config_put(&caller, kind.clone(), tenant, id.clone(), body)
        .await?;
    let version = object.version;
    let (status, location) = if created {
        (StatusCode::CREATED, Some(kind.location(&id)))
    } else {
        (StatusCode::OK, None)
    };
    let tag = etag(&object.value);
    Ok(tagged(
        versioned(status, version, with_quarantine(object), location),
        &tag,
    ))
}

/// RFC 7396 JSON merge patch: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(changes) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let map = target.as_object_mut().expect("made an object above");
            for (key, change) in changes {
                if change.is_null() {
                    map.remove(key);
                } else {
                    merge_patch(map.entry(key.clone()).or_insert(Value::Null), change);
                }
            }
        }
        other => *target = other.clone(),
    }
}

async fn patch_one(
    backend: Shared,
    kind: ConfigKind,
    caller: Caller,
    tenant: Option<String>,
    id: String,
    patch: Value,
) -> Result<Response, ApiError> {
    check_id(kind.noun(), &id)?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "a PATCH body is a JSON merge patch (RFC 7396): a JSON object of the fields to change, null to remove one",
        ));
    }
    if let Some(new_id) = patch.get("id")
        && *new_id != Value::String(id.clone())
    {
        return Err(ApiError::bad_request(
            "id: an object's id cannot change; create a new one and delete this one",
        ));
    }
    let scoped = scope(&caller, tenant)?;
    let current = backend
        .config_get(kind.clone(), scoped.clone(), id.clone())
        .await?;
    let mut value = current.value;
    merge_patch(&mut value, &patch);
    put_one(backend, kind, caller, scoped, id, value).await
}

pub(crate) async fn delete_one(
    backend: Shared,
    kind: ConfigKind,
    caller: Caller,
    tenant: Option<String>,
    id: String,
) -> Result<Response, ApiError> {
    check_id(kind.noun(), &id)?;
    let tenant = scope(&caller, tenant)?;
    check_if_match(&backend, &kind, &tenant, &id).await?;
    if kind == ConfigKind::Tenants {
        // Its nodes' writes and reads all go through the tenant record: removing it under them
        // would leave them in a tenant the fleet no longer knows.
        let members = backend
            .nodes()
            .into_iter()
            .filter(|n| n.tenant_id == id && n.status != "decommissioned")
            .count();
        if members > 0 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "tenant_in_use",
                format!(
                    "tenant {id:?} still has {members} node(s): decommission them first \
                     (GET /v1/nodes?tenant={id}, then POST /v1/nodes/{{id}}/decommission)"
                ),
            ));
        }
    }
    let version = backend
        .config_delete(&caller, kind.clone(), tenant, id.clone())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no {} {id:?}", kind.noun())))?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::HeaderName::from_static("x-config-version"),
        header::HeaderValue::from(version),
    );
    Ok(response)
}

/// `POST` creates: an object that already exists here is a 409 (replace it with `PUT`, change
/// it with `PATCH`). Another node may create the same id concurrently; the merge keeps one.
pub(crate) async fn refuse_existing(
    backend: &Shared,
    kind: &ConfigKind,
    caller: &Ext,
    tenant: &Option<String>,
    id: &str,
) -> Result<(), ApiError> {
    check_id(kind.noun(), id)?;
    let who = caller.as_ref().map(|c| c.0.clone()).unwrap_or(Caller {
        identity: String::new(),
        role: String::new(),
        tenant: None,
    });
    let scoped = scope(&who, tenant.clone())?;
    match backend
        .config_get(kind.clone(), scoped, id.to_string())
        .await
    {
        Ok(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!(
                "{} {id:?} already exists: replace it with PUT {} or change it with PATCH",
                kind.noun(),
                kind.location(id)
            ),
        )),
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok(()),
        Err(e) => Err(e),
    }
}

type Ext = Option<axum::Extension<Caller>>;
type Body = Result<Json<Value>, JsonRejection>;
type ListQ = Result<Query<ListQuery>, QueryRejection>;
type TenantQ = Result<Query<TenantQuery>, QueryRejection>;

const LIST_PARAMS: &str = "limit, cursor and tenant";
const ONE_PARAMS: &str = "tenant";

macro_rules! collection_handlers {
    (
        $list:ident, $create:ident, $get:ident, $put:ident, $patch:ident, $delete:ident, $kind:expr, $id_field:literal,
        openapi {
            tag: $tag:literal,
            collection: $collection:literal,
            item: $item:literal,
            noun: $noun:literal,
            nouns: $nouns:literal,
            new: [$($new:tt)+],
            put: [$($put_body:tt)+],
            stored: [$($stored:tt)+],
            page: [$($page:tt)+],
            patch: [$($patch_body:tt)+],
            id_pattern: $id_pattern:literal,
        }
    ) => {
        #[utoipa::path(
            get,
            path = $collection,
            tag = $tag,
            summary = concat!("Lists the ", $nouns, ", by id"),
            params(
                crate::openapi::ConfigListParams,
            ),
            responses(
                (status = 200, description = concat!("A page of ", $nouns, " (quarantined ones are left out; see `GET /v1/config/status`)."), body = $($page)+, headers(("x-config-version" = u64, description = "The document's configuration version."))),
                (status = 400, description = "A bad `limit`, `cursor` or query parameter; the message names it.", body = crate::wire::ErrorBody),
                (status = 404, description = concat!("No such ", $noun, " (or one of a tenant the caller cannot see)."), body = crate::wire::ErrorBody),
                (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
                (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
            ),
        )]
        pub(crate) async fn $list(
            State(backend): State<Shared>,
            caller: Ext,
            q: ListQ,
        ) -> Result<Response, ApiError> {
            list(backend, $kind, caller_of(caller), query(q, LIST_PARAMS)?).await
        }

        #[utoipa::path(
            post,
            path = $collection,
            tag = $tag,
            summary = concat!("Creates a ", $noun),
            request_body(content = $($new)+),
            params(
                crate::openapi::TenantParam,
            ),
            responses(
                (status = 201, description = concat!("The new ", $noun, ", durable on this node."), body = $($stored)+, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."), ("Location" = String, description = "Where the new object is."))),
                (status = 400, description = "The body is not a valid object of this kind; the message names the field.", body = crate::wire::ErrorBody),
                (status = 404, description = concat!("No such ", $noun, " (or one of a tenant the caller cannot see)."), body = crate::wire::ErrorBody),
                (status = 409, description = concat!("A ", $noun, " with this id exists: replace it with PUT or change it with PATCH."), body = crate::wire::ErrorBody),
                (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
                (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
                (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
                (status = 422, description = "The object is not valid configuration (a reference to an unknown node, an action without its parameter...); the message says what.", body = crate::wire::ErrorBody),
                (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
            ),
        )]
        pub(crate) async fn $create(
            State(backend): State<Shared>,
            caller: Ext,
            q: TenantQ,
            body: Body,
        ) -> Result<Response, ApiError> {
            let tenant = query(q, ONE_PARAMS)?.tenant;
            let kind = $kind;
            let body = json_body(body, kind.noun())?;
            let id = body
                .get($id_field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{}: required (the new {}'s id)",
                        $id_field,
                        kind.noun()
                    ))
                })?;
            let mut body = body;
            if $id_field != "id"
                && let Some(map) = body.as_object_mut()
            {
                map.remove($id_field);
            }
            refuse_existing(&backend, &kind, &caller, &tenant, &id).await?;
            put_one(backend, kind, caller_of(caller), tenant, id, body).await
        }

        #[utoipa::path(
            get,
            path = $item,
            tag = $tag,
            summary = concat!("One ", $noun, " as stored, with `quarantined` when it is held back"),
            params(
                ("id" = String, Path, description = concat!("The ", $noun, "'s id: 1..=64 letters, digits, '-', '_' or '.'."), pattern = $id_pattern),
                crate::openapi::TenantParam,
            ),
            responses(
                (status = 200, description = concat!("The ", $noun, "."), body = $($stored)+, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."))),
                (status = 400, description = "A bad id or query parameter; the message names it.", body = crate::wire::ErrorBody),
                (status = 404, description = concat!("No such ", $noun, " (or one of a tenant the caller cannot see)."), body = crate::wire::ErrorBody),
                (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
                (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
            ),
        )]
        pub(crate) async fn $get(
            State(backend): State<Shared>,
            caller: Ext,
            Path(id): Path<String>,
            q: TenantQ,
        ) -> Result<Response, ApiError> {
            get_one(
                backend,
                $kind,
                caller_of(caller),
                query(q, ONE_PARAMS)?.tenant,
                id,
            )
            .await
        }

        #[utoipa::path(
            put,
            path = $item,
            tag = $tag,
            summary = concat!("Creates or replaces a ", $noun),
            request_body(content = $($put_body)+),
            params(
                ("id" = String, Path, description = concat!("The ", $noun, "'s id: 1..=64 letters, digits, '-', '_' or '.'."), pattern = $id_pattern),
                crate::openapi::TenantParam,
                ("If-Match" = Option<String>, Header, description = "Write only if the object's current `ETag` is one of these (or `*`: it exists); else 409."),
            ),
            responses(
                (status = 200, description = concat!("The ", $noun, ", replaced."), body = $($stored)+, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."))),
                (status = 201, description = concat!("The ", $noun, ", created."), body = $($stored)+, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."), ("Location" = String, description = "Where the new object is."))),
                (status = 400, description = "The body is not a valid object of this kind, or its id is not the path's; the message names the field.", body = crate::wire::ErrorBody),
                (status = 404, description = concat!("No such ", $noun, " (or one of a tenant the caller cannot see)."), body = crate::wire::ErrorBody),
                (status = 409, description = "`If-Match` does not name the object's current `ETag`: read it again and retry.", body = crate::wire::ErrorBody),
                (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
                (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
                (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
                (status = 422, description = "The object is not valid configuration (a reference to an unknown node, an action without its parameter...); the message says what.", body = crate::wire::ErrorBody),
                (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
            ),
        )]
        pub(crate) async fn $put(
            State(backend): State<Shared>,
            caller: Ext,
            Path(id): Path<String>,
            q: TenantQ,
            body: Body,
        ) -> Result<Response, ApiError> {
            let kind = $kind;
            let body = json_body(body, kind.noun())?;
            put_one(
                backend,
                kind,
                caller_of(caller),
                query(q, ONE_PARAMS)?.tenant,
                id,
                body,
            )
            .await
        }

        #[utoipa::path(
            patch,
            path = $item,
            tag = $tag,
            summary = concat!("Changes fields of a ", $noun, " (JSON merge patch, RFC 7396)"),
            request_body(content = $($patch_body)+, content_type = "application/merge-patch+json"),
            params(
                ("id" = String, Path, description = concat!("The ", $noun, "'s id: 1..=64 letters, digits, '-', '_' or '.'."), pattern = $id_pattern),
                crate::openapi::TenantParam,
                ("If-Match" = Option<String>, Header, description = "Write only if the object's current `ETag` is one of these (or `*`: it exists); else 409."),
            ),
            responses(
                (status = 200, description = concat!("The ", $noun, ", changed."), body = $($stored)+, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."))),
                (status = 400, description = "The patch is not a JSON object, changes the id, or makes an object that is not valid; the message names the field.", body = crate::wire::ErrorBody),
                (status = 404, description = concat!("No such ", $noun, " (or one of a tenant the caller cannot see)."), body = crate::wire::ErrorBody),
                (status = 409, description = "`If-Match` does not name the object's current `ETag`: read it again and retry.", body = crate::wire::ErrorBody),
                (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
                (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
                (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
                (status = 422, description = "The object is not valid configuration (a reference to an unknown node, an action without its parameter...); the message says what.", body = crate::wire::ErrorBody),
                (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
            ),
        )]
        pub(crate) async fn $patch(
            State(backend): State<Shared>,
            caller: Ext,
            Path(id): Path<String>,
            q: TenantQ,
            body: Body,
        ) -> Result<Response, ApiError> {
            let kind = $kind;
            let body = json_body(body, "merge patch")?;
            patch_one(
                backend,
                kind,
                caller_of(caller),
                query(q, ONE_PARAMS)?.tenant,
                id,
                body,
            )
            .await
        }

        #[utoipa::path(
            delete,
            path = $item,
            tag = $tag,
            summary = concat!("Deletes a ", $noun),
            params(
                ("id" = String, Path, description = concat!("The ", $noun, "'s id: 1..=64 letters, digits, '-', '_' or '.'."), pattern = $id_pattern),
                crate::openapi::TenantParam,
                ("If-Match" = Option<String>, Header, description = "Write only if the object's current `ETag` is one of these (or `*`: it exists); else 409."),
            ),
            responses(
                (status = 204, description = "Deleted.", headers(("x-config-version" = u64, description = "The document's configuration version."))),
                (status = 400, description = "A bad id or query parameter; the message names it.", body = crate::wire::ErrorBody),
                (status = 404, description = concat!("No such ", $noun, " (or one of a tenant the caller cannot see)."), body = crate::wire::ErrorBody),
                (status = 409, description = "`If-Match` does not name the object's current `ETag` (read it again and retry), or a tenant still has nodes (decommission them first).", body = crate::wire::ErrorBody),
                (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
                (status = 422, description = "The object is not valid configuration (a reference to an unknown node, an action without its parameter...); the message says what.", body = crate::wire::ErrorBody),
                (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
            ),
        )]
        pub(crate) async fn $delete(
            State(backend): State<Shared>,
            caller: Ext,
            Path(id): Path<String>,
            q: TenantQ,
        ) -> Result<Response, ApiError> {
            delete_one(
                backend,
                $kind,
                caller_of(caller),
                query(q, ONE_PARAMS)?.tenant,
                id,
            )
            .await
        }
    };
}

collection_handlers!(
    list_routes,
    create_route,
    get_route,
    put_route,
    patch_route,
    delete_route,
    ConfigKind::Routes,
    "id",
    openapi {
        tag: "routes",
        collection: "/v1/routes",
        item: "/v1/routes/{id}",
        noun: "route policy",
        nouns: "route policies",
        new: [nexus_crdt::RoutePolicy],
        put: [crate::openapi::PutRoutePolicy],
        stored: [crate::openapi::StoredRoutePolicy],
        page: [crate::openapi::RoutePolicyPage],
        patch: [crate::openapi::RoutePolicyPatch],
        id_pattern: "^[A-Za-z0-9._-]{1,64}$",
    }
);
collection_handlers!(
    list_firmware,
    create_firmware,
    get_firmware,
    put_firmware,
    patch_firmware,
    delete_firmware,
    ConfigKind::FirmwareTargets,
    "id",
    openapi {
        tag: "firmware",
        collection: "/v1/firmware/targets",
        item: "/v1/firmware/targets/{id}",
        noun: "firmware target",
        nouns: "firmware targets",
        new: [nexus_crdt::FirmwareTarget],
        put: [crate::openapi::PutFirmwareTarget],
        stored: [crate::openapi::StoredFirmwareTarget],
        page: [crate::openapi::FirmwareTargetPage],
        patch: [crate::openapi::FirmwareTargetPatch],
        id_pattern: "^[A-Za-z0-9._-]{1,64}$",
    }
);
collection_handlers!(
    list_tenants,
    create_tenant,
    get_tenant,
    put_tenant,
    patch_tenant,
    delete_tenant,
    ConfigKind::Tenants,
    "id",
    openapi {
        tag: "tenants",
        collection: "/v1/tenants",
        item: "/v1/tenants/{id}",
        noun: "tenant",
        nouns: "tenants",
        new: [crate::openapi::NewTenant],
        put: [crate::openapi::PutTenant],
        stored: [crate::openapi::StoredTenant],
        page: [crate::openapi::TenantPage],
        patch: [crate::openapi::TenantPatch],
        id_pattern: "^[A-Za-z0-9._-]{1,63}$",
    }
);

collection_handlers!(
    list_fleet_policies,
    create_fleet_policy,
    get_fleet_policy,
    put_fleet_policy,
    patch_fleet_policy,
    delete_fleet_policy,
    ConfigKind::FleetPolicies,
    "id",
    openapi {
        tag: "fleet",
        collection: "/v1/fleet/policies",
        item: "/v1/fleet/policies/{id}",
        noun: "fleet policy",
        nouns: "fleet policies",
        new: [nexus_crdt::RoutePolicy],
        put: [crate::openapi::PutRoutePolicy],
        stored: [crate::openapi::StoredRoutePolicy],
        page: [crate::openapi::RoutePolicyPage],
        patch: [crate::openapi::RoutePolicyPatch],
        id_pattern: "^[A-Za-z0-9._-]{1,64}$",
    }
);

/// Site routes carry the site in the path: `/v1/sites/{site}/routes[/{id}]`.
fn site_kind(site: &str) -> Result<ConfigKind, ApiError> {
    check_id("site", site)?;
    Ok(ConfigKind::SiteRoutes(site.to_string()))
}

#[utoipa::path(
    get,
    path = "/v1/sites/{site}/routes",
    tag = "routes",
    summary = "Lists the route policies scoped to one site, by id",
    params(
        ("site" = String, Path, description = "The site: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        crate::openapi::ConfigListParams,
    ),
    responses(
        (status = 200, description = "A page of route policies (quarantined ones are left out).", body = crate::openapi::RoutePolicyPage, headers(("x-config-version" = u64, description = "The document's configuration version."))),
        (status = 400, description = "A bad site, id or query parameter; the message names it.", body = crate::wire::ErrorBody),
        (status = 404, description = "A tenant the caller cannot see.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn list_site_routes(
    State(backend): State<Shared>,
    caller: Ext,
    Path(site): Path<String>,
    q: ListQ,
) -> Result<Response, ApiError> {
    list(
        backend,
        site_kind(&site)?,
        caller_of(caller),
        query(q, LIST_PARAMS)?,
    )
    .await
}

#[utoipa::path(
    post,
    path = "/v1/sites/{site}/routes",
    tag = "routes",
    summary = "Creates a route policy scoped to one site",
    request_body(content = nexus_crdt::RoutePolicy),
    params(
        ("site" = String, Path, description = "The site: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        crate::openapi::TenantParam,
    ),
    responses(
        (status = 201, description = "The new route policy, durable on this node.", body = crate::openapi::StoredRoutePolicy, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."), ("Location" = String, description = "Where the new object is."))),
        (status = 400, description = "The body is not a valid route policy; the message names the field.", body = crate::wire::ErrorBody),
        (status = 404, description = "A tenant the caller cannot see.", body = crate::wire::ErrorBody),
        (status = 409, description = "A route policy with this id exists: replace it with PUT or change it with PATCH.", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 422, description = "The object is not valid configuration (a reference to an unknown node, an action without its parameter...); the message says what.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn create_site_route(
    State(backend): State<Shared>,
    caller: Ext,
    Path(site): Path<String>,
    q: TenantQ,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = site_kind(&site)?;
    let body = json_body(body, kind.noun())?;
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("id: required (the new route policy's id)"))?;
    let tenant = query(q, ONE_PARAMS)?.tenant;
    refuse_existing(&backend, &kind, &caller, &tenant, &id).await?;
    put_one(backend, kind, caller_of(caller), tenant, id, body).await
}

#[utoipa::path(
    get,
    path = "/v1/sites/{site}/routes/{id}",
    tag = "routes",
    summary = "One site-scoped route policy as stored",
    params(
        ("site" = String, Path, description = "The site: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("id" = String, Path, description = "The route policy's id: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        crate::openapi::TenantParam,
    ),
    responses(
        (status = 200, description = "The route policy.", body = crate::openapi::StoredRoutePolicy, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."))),
        (status = 400, description = "A bad site, id or query parameter; the message names it.", body = crate::wire::ErrorBody),
        (status = 404, description = "No such route policy (or one of a tenant the caller cannot see).", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn get_site_route(
    State(backend): State<Shared>,
    caller: Ext,
    Path((site, id)): Path<(String, String)>,
    q: TenantQ,
) -> Result<Response, ApiError> {
    get_one(
        backend,
        site_kind(&site)?,
        caller_of(caller),
        query(q, ONE_PARAMS)?.tenant,
        id,
    )
    .await
}

#[utoipa::path(
    put,
    path = "/v1/sites/{site}/routes/{id}",
    tag = "routes",
    summary = "Creates or replaces a site-scoped route policy",
    request_body(content = crate::openapi::PutRoutePolicy),
    params(
        ("site" = String, Path, description = "The site: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("id" = String, Path, description = "The route policy's id: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        crate::openapi::TenantParam,
        ("If-Match" = Option<String>, Header, description = "Write only if the object's current `ETag` is one of these (or `*`: it exists); else 409."),
    ),
    responses(
        (status = 200, description = "The route policy, replaced.", body = crate::openapi::StoredRoutePolicy, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."))),
        (status = 201, description = "The route policy, created.", body = crate::openapi::StoredRoutePolicy, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."), ("Location" = String, description = "Where the new object is."))),
        (status = 400, description = "The body is not a valid route policy, or its id is not the path's; the message names the field.", body = crate::wire::ErrorBody),
        (status = 404, description = "No such route policy (or one of a tenant the caller cannot see).", body = crate::wire::ErrorBody),
        (status = 409, description = "`If-Match` does not name the object's current `ETag`: read it again and retry.", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 422, description = "The object is not valid configuration (a reference to an unknown node, an action without its parameter...); the message says what.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn put_site_route(
    State(backend): State<Shared>,
    caller: Ext,
    Path((site, id)): Path<(String, String)>,
    q: TenantQ,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = site_kind(&site)?;
    let body = json_body(body, kind.noun())?;
    put_one(
        backend,
        kind,
        caller_of(caller),
        query(q, ONE_PARAMS)?.tenant,
        id,
        body,
    )
    .await
}

#[utoipa::path(
    patch,
    path = "/v1/sites/{site}/routes/{id}",
    tag = "routes",
    summary = "Changes fields of a site-scoped route policy (JSON merge patch, RFC 7396)",
    request_body(content = crate::openapi::RoutePolicyPatch, content_type = "application/merge-patch+json"),
    params(
        ("site" = String, Path, description = "The site: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("id" = String, Path, description = "The route policy's id: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        crate::openapi::TenantParam,
        ("If-Match" = Option<String>, Header, description = "Write only if the object's current `ETag` is one of these (or `*`: it exists); else 409."),
    ),
    responses(
        (status = 200, description = "The route policy, changed.", body = crate::openapi::StoredRoutePolicy, headers(("x-config-version" = u64, description = "The document's configuration version."), ("ETag" = String, description = "The object's entity tag: send it as `If-Match` to write only that version."))),
        (status = 400, description = "The patch is not a JSON object, changes the id, or makes a policy that is not valid; the message names the field.", body = crate::wire::ErrorBody),
        (status = 404, description = "No such route policy (or one of a tenant the caller cannot see).", body = crate::wire::ErrorBody),
        (status = 409, description = "`If-Match` does not name the object's current `ETag`: read it again and retry.", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 422, description = "The object is not valid configuration (a reference to an unknown node, an action without its parameter...); the message says what.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn patch_site_route(
    State(backend): State<Shared>,
    caller: Ext,
    Path((site, id)): Path<(String, String)>,
    q: TenantQ,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = site_kind(&site)?;
    let body = json_body(body, "merge patch")?;
    patch_one(
        backend,
        kind,
        caller_of(caller),
        query(q, ONE_PARAMS)?.tenant,
        id,
        body,
    )
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/sites/{site}/routes/{id}",
    tag = "routes",
    summary = "Deletes a site-scoped route policy",
    params(
        ("site" = String, Path, description = "The site: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("id" = String, Path, description = "The route policy's id: 1..=64 letters, digits, '-', '_' or '.'.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        crate::openapi::TenantParam,
        ("If-Match" = Option<String>, Header, description = "Write only if the object's current `ETag` is one of these (or `*`: it exists); else 409."),
    ),
    responses(
        (status = 204, description = "Deleted.", headers(("x-config-version" = u64, description = "The document's configuration version."))),
        (status = 400, description = "A bad site, id or query parameter; the message names it.", body = crate::wire::ErrorBody),
        (status = 404, description = "No such route policy (or one of a tenant the caller cannot see).", body = crate::wire::ErrorBody),
        (status = 409, description = "`If-Match` does not name the object's current `ETag`: read it again and retry.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 422, description = "The object is not valid configuration (a reference to an unknown node, an action without its parameter...); the message says what.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn delete_site_route(
    State(backend): State<Shared>,
    caller: Ext,
    Path((site, id)): Path<(String, String)>,
    q: TenantQ,
) -> Result<Response, ApiError> {
    delete_one(
        backend,
        site_kind(&site)?,
        caller_of(caller),
        query(q, ONE_PARAMS)?.tenant,
        id,
    )
    .await
}

// --- fleet settings ---------------------------------------------------------------------------

#[utoipa::path(
    get,
    path = "/v1/fleet/settings",
    tag = "fleet",
    summary = "The fleet settings",
    responses(
        (status = 200, description = "The settings; null fields take the built-in default.", body = nexus_crdt::FleetSettings, headers(("x-config-version" = u64, description = "The document's configuration version."))),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn get_settings(State(backend): State<Shared>) -> Result<Response, ApiError> {
    let (settings, version) = backend.fleet_settings().await?;
    Ok(versioned(StatusCode::OK, version, settings, None))
}

#[utoipa::path(
    put,
    path = "/v1/fleet/settings",
    tag = "fleet",
    summary = "Replaces the fleet settings (anchors)",
    request_body(content = nexus_crdt::FleetSettings),
    responses(
        (status = 200, description = "The settings, durable on this node.", body = nexus_crdt::FleetSettings, headers(("x-config-version" = u64, description = "The document's configuration version."))),
        (status = 400, description = "The body is not valid settings; the message names the field.", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 422, description = "A setting is out of range; the message names it.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn put_settings(
    State(backend): State<Shared>,
    caller: Ext,
    body: Body,
) -> Result<Response, ApiError> {
    let body = json_body(body, "fleet settings")?;
    check_integers("", &body)?;
    if !body.is_object() {
        // Serde would read a struct from a JSON array too, by position.
        return Err(ApiError::bad_request(
            "the body must be a JSON object of fleet settings",
        ));
    }
    let (settings, version) = backend.put_fleet_settings(&caller_of(caller), body).await?;
    Ok(versioned(StatusCode::OK, version, settings, None))
}

#[utoipa::path(
    patch,
    path = "/v1/fleet/settings",
    tag = "fleet",
    summary = "Changes fleet settings (JSON merge patch, RFC 7396; anchors)",
    request_body(content = crate::openapi::FleetSettingsPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The settings, durable on this node.", body = nexus_crdt::FleetSettings, headers(("x-config-version" = u64, description = "The document's configuration version."))),
        (status = 400, description = "The patch is not a JSON object, or makes settings that are not valid; the message names the field.", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 422, description = "A setting is out of range; the message names it.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn patch_settings(
    State(backend): State<Shared>,
    caller: Ext,
    body: Body,
) -> Result<Response, ApiError> {
    let patch = json_body(body, "merge patch")?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "a PATCH body is a JSON merge patch (RFC 7396): a JSON object of the fields to change, null to remove one",
        ));
    }
    let (mut settings, _) = backend.fleet_settings().await?;
    merge_patch(&mut settings, &patch);
    let (settings, version) = backend
        .put_fleet_settings(&caller_of(caller), settings)
        .await?;
    Ok(versioned(StatusCode::OK, version, settings, None))
}

// --- snapshots --------------------------------------------------------------------------------

/// `POST /v1/config/snapshots` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Display name.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: String,
    /// `fleet` or `tenant/<id>`; default: the node's tenant document.
    #[serde(default)]
    #[schema(pattern = "^(fleet|tenant/[A-Za-z0-9._-]{1,63})$")]
    document: Option<String>,
}

/// `?document=` of the snapshot list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    document: Option<String>,
}

/// A tenant's caller writes its own tenant's document only: another tenant's reads as absent
/// (404), the fleet document needs a fleet admin (403).
fn confine_document(caller: &Caller, doc: &str) -> Result<(), ApiError> {
    if !visible_document(caller, doc) {
        return Err(ApiError::not_found(format!("no document {doc:?}")));
    }
    if doc == "fleet" && caller.tenant.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the fleet document is changed by fleet admins only",
        ));
    }
    Ok(())
}

fn visible_document(caller: &Caller, doc: &str) -> bool {
    match &caller.tenant {
        None => true,
        Some(t) => doc == "fleet" || doc == format!("tenant/{t}"),
    }
}

#[utoipa::path(
    post,
    path = "/v1/config/snapshots",
    tag = "config",
    summary = "Names the current state of a document",
    request_body(content = CreateSnapshot),
    responses(
        (status = 201, description = "The snapshot.", body = crate::openapi::Snapshot, headers(("x-config-version" = u64, description = "The document's configuration version."), ("Location" = String, description = "Where the new object is."))),
        (status = 400, description = "The body is not a valid snapshot request; the message names the field.", body = crate::wire::ErrorBody),
        (status = 404, description = "A document the caller cannot see.", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 422, description = "A bad name; the message says why.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn create_snapshot(
    State(backend): State<Shared>,
    caller: Ext,
    body: Result<Json<CreateSnapshot>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body, "snapshot")?;
    if let Some(doc) = &body.document {
        check_document("document", doc)?;
    }
    let caller = caller_of(caller);
    if let Some(doc) = &body.document {
        confine_document(&caller, doc)?;
    }
    let snapshot = backend
        .snapshot_create(&caller, body.document, body.name)
        .await?;
    let id = snapshot["id"].as_str().unwrap_or_default().to_string();
    let version = snapshot["version"].as_u64().unwrap_or(0);
    Ok(versioned(
        StatusCode::CREATED,
        version,
        snapshot,
        Some(format!("/v1/config/snapshots/{id}")),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/config/snapshots",
    tag = "config",
    summary = "Lists the snapshots of the documents this node holds",
    params(
        ("document" = Option<String>, Query, description = "Only this document's: `fleet` or `tenant/<id>`.", pattern = "^(fleet|tenant/[A-Za-z0-9._-]{1,63})$"),
    ),
    responses(
        (status = 200, description = "The snapshots the caller may see.", body = crate::openapi::SnapshotList),
        (status = 400, description = "A bad `document` or query parameter; the message names it.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn list_snapshots(
    State(backend): State<Shared>,
    caller: Ext,
    q: Result<Query<SnapshotQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q, "document")?;
    if let Some(doc) = &q.document {
        check_document("document", doc)?;
    }
    let caller = caller_of(caller);
    let items: Vec<Value> = backend
        .snapshots(q.document)
        .await?
        .into_iter()
        .filter(|s| visible_document(&caller, s["document"].as_str().unwrap_or_default()))
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

#[utoipa::path(
    get,
    path = "/v1/config/snapshots/{id}",
    tag = "config",
    summary = "One snapshot",
    params(
        ("id" = String, Path, description = "Snapshot id.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses(
        (status = 200, description = "The snapshot.", body = crate::openapi::Snapshot),
        (status = 400, description = "A bad snapshot id.", body = crate::wire::ErrorBody),
        (status = 404, description = "No such snapshot (or one of a document the caller cannot see).", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn get_snapshot(
    State(backend): State<Shared>,
    caller: Ext,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id("snapshot", &id)?;
    let caller = caller_of(caller);
    backend
        .snapshots(None)
        .await?
        .into_iter()
        .find(|s| {
            s["id"] == id.as_str()
                && visible_document(&caller, s["document"].as_str().unwrap_or_default())
        })
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no snapshot {id:?}")))
}

#[utoipa::path(
    post,
    path = "/v1/config/snapshots/{id}/rollback",
    tag = "config",
    summary = "Restores a snapshot's state as a new change",
    params(
        ("id" = String, Path, description = "Snapshot id.", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses(
        (status = 200, description = "The outcome.", body = crate::openapi::Rollback, headers(("x-config-version" = u64, description = "The document's configuration version."))),
        (status = 400, description = "A bad snapshot id.", body = crate::wire::ErrorBody),
        (status = 404, description = "No such snapshot.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that document, or only anchors write it: send the request to an anchor (`GET /v1/nodes`).", body = crate::wire::ErrorBody),
        (status = 422, description = "The object is not valid configuration (a reference to an unknown node, an action without its parameter...); the message says what.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn rollback(
    State(backend): State<Shared>,
    caller: Ext,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id("snapshot", &id)?;
    let caller = caller_of(caller);
    if caller.tenant.is_some() {
        let document = backend
            .snapshots(None)
            .await?
            .into_iter()
            .find(|s| s["id"] == id.as_str())
            .and_then(|s| s["document"].as_str().map(str::to_string))
            .ok_or_else(|| ApiError::not_found(format!("no snapshot {id:?}")))?;
        confine_document(&caller, &document)?;
    }
    let result = backend.rollback(&caller, &id).await?;
    let version = result["version"].as_u64().unwrap_or(0);
    Ok(versioned(StatusCode::OK, version, result, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // RFC 7396 appendix A, a few of its cases.
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (
                r#"{"a":{"b":"c"}}"#,
                r#"{"a":{"b":"d","c":null}}"#,
                r#"{"a":{"b":"d"}}"#,
            ),
            (r#"[1,2]"#, r#"{"a":"b","c":null}"#, r#"{"a":"b"}"#),
        ];
        for (target, patch, want) in cases {
            let mut t: Value = serde_json::from_str(target).unwrap();
            merge_patch(&mut t, &serde_json::from_str(patch).unwrap());
            assert_eq!(
                t,
                serde_json::from_str::<Value>(want).unwrap(),
                "{target} + {patch}"
            );
        }
    }

    #[test]
    fn confined_callers_see_only_their_tenant() {
        let confined = Caller {
            identity: "node:ab".into(),
            role: "node".into(),
            tenant: Some("acme".into()),
        };
        assert_eq!(scope(&confined, None).unwrap(), Some("acme".into()));
        assert_eq!(
            scope(&confined, Some("acme".into())).unwrap(),
            Some("acme".into())
        );
        assert_eq!(
            scope(&confined, Some("other".into())).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        let admin = Caller {
            identity: "api-key:1234".into(),
            role: "fleet-admin".into(),
            tenant: None,
        };
        assert_eq!(
            scope(&admin, Some("other".into())).unwrap(),
            Some("other".into())
        );
        assert_eq!(scope(&admin, Some(String::new())).unwrap(), None);
    }
}
