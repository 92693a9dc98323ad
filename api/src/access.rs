//! Access management under `/v1`: API keys, a tenant's OIDC provider, and the audit log.
//!
//! | route | |
//! |---|---|
//! | `POST /v1/keys`, `GET /v1/keys`, `GET /v1/keys/{id}`, `DELETE /v1/keys/{id}` | API keys (revocation keeps them listed) |
//! | `GET/PUT/DELETE /v1/tenants/{id}/oidc` | the OIDC issuer a tenant's users sign in with |
//! | `GET /v1/audit` | every API call, newest first, filtered; read-only |
//!
//! Who may call them is decided by [`crate::auth::permission`]; here a tenant's caller is
//! confined to its tenant (another tenant's keys and provider read as absent).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::wire::{ApiKey, AuditEntry, AuditQuery, Caller, CreateKey, Page};
use crate::{ApiError, PageQuery, Shared, cursor, json_body, paginate};

type Ext = Option<axum::Extension<Caller>>;

fn caller_of(caller: Ext) -> Result<Caller, ApiError> {
    caller
        .map(|c| c.0)
        .ok_or_else(|| ApiError::internal("the caller was not recorded"))
}

/// The tenant a request may touch: a tenant's caller only its own (others are 404).
fn confine(caller: &Caller, asked: Option<String>) -> Result<Option<String>, ApiError> {
    match (&caller.tenant, asked) {
        (Some(own), Some(asked)) if *own != asked => Err(ApiError::not_found(format!(
            "no tenant {asked:?} visible to {}",
            caller.identity
        ))),
        (Some(own), _) => Ok(Some(own.clone())),
        (None, asked) => Ok(asked),
    }
}

/// `POST /v1/keys`.
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "access",
    summary = "Creates an API key",
    request_body(content = crate::wire::CreateKey),
    responses(
        (status = 201, description = "The key and its secret, shown this once.", body = crate::wire::CreatedKey, headers(("Location" = String, description = "`/v1/keys/{id}`"))),
        (status = 400, description = "The body is not a valid key request (a bad role, name or ttl, a tenant role without tenant); the message names the field.", body = crate::wire::ErrorBody),
        (status = 404, description = "A tenant the caller cannot see.", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that tenant's document, or only anchors write it: send the request to an anchor.", body = crate::wire::ErrorBody),
        (status = 422, description = "The key is not valid configuration; the message says what.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn create_key(
    State(backend): State<Shared>,
    caller: Ext,
    body: Result<Json<CreateKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = caller_of(caller)?;
    let mut request = json_body(body, "API key")?;
    request.tenant = confine(&caller, request.tenant)?;
    match (request.role.as_str(), &request.tenant) {
        ("fleet-admin", None) => {}
        ("fleet-admin", Some(t)) => {
            let why = if caller.tenant.is_some() {
                "a tenant's caller cannot create fleet-admin keys".to_string()
            } else {
                format!("a fleet-admin key is fleet-wide: leave tenant out (got {t:?})")
            };
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", why));
        }
        ("admin" | "operator" | "viewer", Some(_)) => {}
        ("admin" | "operator" | "viewer", None) => {
            return Err(ApiError::bad_request(format!(
                "tenant: a key with role {} belongs to a tenant; name it",
                request.role
            )));
        }
        (other, _) => {
            return Err(ApiError::bad_request(format!(
                "role must be admin, operator, viewer or fleet-admin, got {other:?}"
            )));
        }
    }
    if request.name.trim().is_empty() || request.name.chars().count() > 128 {
        return Err(ApiError::bad_request(
            "name must be 1 to 128 characters and not blank",
        ));
    }
    let created = backend.create_key(&caller, request).await?;
    let location = format!("/v1/keys/{}", created.key.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

/// `?tenant=&limit=&cursor=` of `GET /v1/keys`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyQuery {
    tenant: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/keys`.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "access",
    summary = "Lists the API keys this node knows, by id (never their secrets)",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant's keys."),
        crate::openapi::PageParams,
    ),
    responses(
        (status = 200, description = "A page of keys; revoked keys stay listed.", body = Page<crate::wire::ApiKey>),
        (status = 400, description = "A bad `limit` or `cursor`, or an unknown query parameter; the message names it.", body = crate::wire::ErrorBody),
        (status = 404, description = "A tenant the caller cannot see.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn list_keys(
    State(backend): State<Shared>,
    caller: Ext,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Json<Page<ApiKey>>, ApiError> {
    let caller = caller_of(caller)?;
    let Query(query) = query.map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; this list accepts tenant, limit and cursor",
            err.body_text()
        ))
    })?;
    let tenant = confine(&caller, query.tenant)?;
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    paginate(backend.keys(tenant).await?, &page, "keys", |k| &k.id).map(Json)
}

fn check_key_id(id: &str) -> Result<(), ApiError> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "key id must be 1 to 64 letters, digits, - or _, got {id:?}"
        )))
    }
}

/// `GET /v1/keys/{id}`.
#[utoipa::path(
    get,
    path = "/v1/keys/{id}",
    tag = "access",
    summary = "One API key",
    params(
        ("id" = String, Path, description = "Key id.", pattern = "^[A-Za-z0-9_-]{1,64}$"),
    ),
    responses(
        (status = 200, description = "The key.", body = crate::wire::ApiKey),
        (status = 400, description = "A bad key id.", body = crate::wire::ErrorBody),
        (status = 404, description = "No such key (or one of another tenant).", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn get_key(
    State(backend): State<Shared>,
    caller: Ext,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    let caller = caller_of(caller)?;
    check_key_id(&id)?;
    let tenant = confine(&caller, None)?;
    backend
        .keys(tenant)
        .await?
        .into_iter()
        .find(|k| k.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no API key {id:?} visible here")))
}

/// `DELETE /v1/keys/{id}`: revokes; the key stays listed with `revoked_at`.
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "access",
    summary = "Revokes an API key (it stays listed, refused)",
    params(
        ("id" = String, Path, description = "Key id.", pattern = "^[A-Za-z0-9_-]{1,64}$"),
    ),
    responses(
        (status = 200, description = "The key, now revoked.", body = crate::wire::ApiKey),
        (status = 400, description = "A bad key id.", body = crate::wire::ErrorBody),
        (status = 404, description = "No such key (or one of another tenant).", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that tenant's document, or only anchors write it: send the request to an anchor.", body = crate::wire::ErrorBody),
        (status = 422, description = "The change is not valid configuration; the message says what.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn revoke_key(
    State(backend): State<Shared>,
    caller: Ext,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    let caller = caller_of(caller)?;
    check_key_id(&id)?;
    let tenant = confine(&caller, None)?;
    backend.revoke_key(&caller, tenant, &id).await.map(Json)
}

fn check_tenant_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "tenant id must be 1 to 63 letters, digits, '-', '_' or '.', got {id:?}"
        )))
    }
}

/// `GET /v1/tenants/{id}/oidc`.
#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/oidc",
    tag = "access",
    summary = "A tenant's OIDC provider",
    params(
        ("id" = String, Path, description = "Tenant id.", pattern = "^[A-Za-z0-9._-]{1,63}$"),
    ),
    responses(
        (status = 200, description = "The provider.", body = nexus_crdt::OidcProvider),
        (status = 400, description = "A bad tenant id.", body = crate::wire::ErrorBody),
        (status = 404, description = "The tenant has no provider (or the caller cannot see it).", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that tenant's document, or only anchors write it: send the request to an anchor.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn get_oidc(
    State(backend): State<Shared>,
    caller: Ext,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = caller_of(caller)?;
    check_tenant_id(&tenant)?;
    confine(&caller, Some(tenant.clone()))?;
    backend.oidc(&tenant).await?.map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "tenant {tenant} has no OIDC provider: PUT /v1/tenants/{tenant}/oidc sets one"
        ))
    })
}

/// `PUT /v1/tenants/{id}/oidc`.
#[utoipa::path(
    put,
    path = "/v1/tenants/{id}/oidc",
    tag = "access",
    summary = "Sets a tenant's OIDC provider",
    request_body(content = nexus_crdt::OidcProvider),
    params(
        ("id" = String, Path, description = "Tenant id.", pattern = "^[A-Za-z0-9._-]{1,63}$"),
    ),
    responses(
        (status = 200, description = "The provider, durable on this node.", body = nexus_crdt::OidcProvider),
        (status = 400, description = "A bad tenant id, or a body that is not a provider; the message names the field.", body = crate::wire::ErrorBody),
        (status = 404, description = "A tenant the caller cannot see.", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that tenant's document, or only anchors write it: send the request to an anchor.", body = crate::wire::ErrorBody),
        (status = 422, description = "The provider is not valid configuration; the message says what.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn put_oidc(
    State(backend): State<Shared>,
    caller: Ext,
    Path(tenant): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = caller_of(caller)?;
    check_tenant_id(&tenant)?;
    confine(&caller, Some(tenant.clone()))?;
    let body = json_body(body, "OIDC provider")?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the OIDC provider must be a JSON object with issuer, audience and jwks_uri",
        ));
    }
    let stored = backend.put_oidc(&caller, &tenant, Some(body)).await?;
    Ok(Json(stored.unwrap_or(Value::Null)))
}

/// `DELETE /v1/tenants/{id}/oidc`.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{id}/oidc",
    tag = "access",
    summary = "Removes a tenant's OIDC provider",
    params(
        ("id" = String, Path, description = "Tenant id.", pattern = "^[A-Za-z0-9._-]{1,63}$"),
    ),
    responses(
        (status = 204, description = "Removed (or there was none)."),
        (status = 400, description = "A bad tenant id.", body = crate::wire::ErrorBody),
        (status = 404, description = "A tenant the caller cannot see.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node does not hold that tenant's document, or only anchors write it: send the request to an anchor.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn delete_oidc(
    State(backend): State<Shared>,
    caller: Ext,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let caller = caller_of(caller)?;
    check_tenant_id(&tenant)?;
    confine(&caller, Some(tenant.clone()))?;
    backend.put_oidc(&caller, &tenant, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    tenant: Option<String>,
    identity: Option<String>,
    action: Option<String>,
    result: Option<String>,
    node: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A time bound: RFC 3339 or Unix milliseconds.
fn parse_time(field: &str, raw: &str) -> Result<u64, ApiError> {
    if let Ok(ms) = raw.parse::<u64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field} must be an RFC 3339 time (2026-12-01T10:00:00Z) or Unix milliseconds, \
                 got {raw:?}"
            ))
        })
}

/// `GET /v1/audit`.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "access",
    summary = "The audit log: every API call, newest first",
    params(
        ("tenant" = Option<String>, Query, description = "Only calls of this tenant's callers."),
        ("identity" = Option<String>, Query, description = "Only calls of this caller identity."),
        ("action" = Option<String>, Query, description = "Only actions containing this (`DELETE`, `/v1/routes`)."),
        ("result" = Option<String>, Query, description = "Only this result.", pattern = "^(ok|denied|error)$"),
        ("node" = Option<String>, Query, description = "Only calls served by this node."),
        ("since" = Option<String>, Query, description = "From this time: RFC 3339 or Unix milliseconds."),
        ("until" = Option<String>, Query, description = "Before this time: RFC 3339 or Unix milliseconds."),
        crate::openapi::PageParams,
    ),
    responses(
        (status = 200, description = "A page of audit entries.", body = Page<crate::wire::AuditEntry>),
        (status = 400, description = "A bad filter, time, `limit` or `cursor`; the message names it.", body = crate::wire::ErrorBody),
        (status = 404, description = "A tenant the caller cannot see.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node keeps no audit log.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn audit(
    State(backend): State<Shared>,
    caller: Ext,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let caller = caller_of(caller)?;
    let Query(q) = query.map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; /v1/audit accepts tenant, identity, action, result, node, \
             since, until, limit and cursor",
            err.body_text()
        ))
    })?;
    let limit = PageQuery {
        limit: q.limit.clone(),
        cursor: None,
    }
    .limit()?;
    if let Some(r) = &q.result
        && !matches!(r.as_str(), "ok" | "denied" | "error")
    {
        return Err(ApiError::bad_request(format!(
            "result must be ok, denied or error, got {r:?}"
        )));
    }
    let after = match &q.cursor {
        None => None,
        Some(raw) => {
            let key = cursor::decode("audit", raw).map_err(ApiError::bad_request)?;
            let well_formed = |id: &str| {
                id.split_once('-').is_some_and(|(node, seq)| {
                    node.len() == 32
                        && node.bytes().all(|b| b.is_ascii_hexdigit())
                        && !seq.is_empty()
                        && seq.len() <= 19
                        && seq.bytes().all(|b| b.is_ascii_digit())
                })
            };
            let (ms, id) = key
                .split_once(':')
                .and_then(|(ms, id)| Some((ms.parse::<u64>().ok()?, id.to_string())))
                .filter(|(_, id)| well_formed(id))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "cursor: not a cursor of /v1/audit (pass next_cursor of the previous page)",
                    )
                })?;
            Some((ms, id))
        }
    };
    let query = AuditQuery {
        tenant: confine(&caller, q.tenant)?,
        identity: q.identity,
        action: q.action,
        result: q.result,
        node: q.node,
        since_ms: q
            .since
            .as_deref()
            .map(|s| parse_time("since", s))
            .transpose()?,
        until_ms: q
            .until
            .as_deref()
            .map(|s| parse_time("until", s))
            .transpose()?,
        limit,
        after,
    };
    let (items, more) = backend.audit(query).await?;
    let next_cursor = if more {
        items
            .last()
            .map(|e| cursor::encode("audit", &format!("{}:{}", e.time_ms, e.id)))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}
