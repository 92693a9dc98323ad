//! Tenant onboarding (`POST /v1/tenants`) and the fleet duties (`GET /v1/fleet/duties`).
//!
//! Onboarding creates a tenant in one call: its record in the fleet document, this anchor's CA
//! for it (under the anchor's intermediate), a first admin (an API key returned once, and/or an
//! OIDC provider) and the default policies:
//!
//! | id | priority | match | action |
//! |---|---|---|---|
//! | `default-allow-tenant` | 999 | `source_tenant: own` | allow |
//! | `default-deny-other-tenants` | 1000 | `source_tenant: other` | deny |
//!
//! Priority 1000 is the lowest there is, so any policy the tenant writes decides first. Every
//! input is checked before anything is written; if a step fails, what was made is removed
//! again and the error names the step (and what could not be removed, if anything). The admin
//! key is made last, so once it exists nothing can fail and its secret always reaches the
//! caller.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{ConfigKind, caller_of, delete_one, put_one, refuse_existing};
use crate::wire::{Caller, CreateKey, CreatedKey};
use crate::{ApiError, Shared};

/// Ids of the default policies onboarding writes.
pub const DEFAULT_POLICIES: [&str; 2] = ["default-allow-tenant", "default-deny-other-tenants"];

/// The onboarding fields of a `POST /v1/tenants` body (besides the tenant record).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Onboarding {
    /// Create a first admin API key (default true).
    #[serde(default)]
    admin_key: Option<bool>,
    /// Its lifetime (`90d`); it never expires when absent.
    #[serde(default)]
    admin_key_ttl: Option<String>,
    /// An OIDC provider whose tokens the tenant accepts.
    #[serde(default)]
    oidc: Option<Value>,
    /// Write the default policies (default true).
    #[serde(default)]
    default_policies: Option<bool>,
}

const ONBOARDING_FIELDS: [&str; 4] = ["admin_key", "admin_key_ttl", "oidc", "default_policies"];

/// What onboarding did, beside the stored tenant.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Onboarded {
    /// The first admin key (its secret is shown only here, once); null when none was asked for.
    pub admin_key: Option<CreatedKey>,
    /// This anchor's CA for the tenant, PEM: the tenant's node certificates chain through it.
    pub certificate_authority: Option<String>,
    /// The OIDC issuer the tenant accepts, when one was given.
    pub oidc_issuer: Option<String>,
    /// The default policies written.
    pub default_policies: Vec<String>,
}

fn default_policy(id: &str) -> Value {
    let (priority, scope, action, name) = if id == DEFAULT_POLICIES[0] {
        (
            999,
            "own",
            "allow",
            "Allow traffic between the tenant's nodes",
        )
    } else {
        (
            1000,
            "other",
            "deny",
            "Deny traffic from other tenants' nodes",
        )
    };
    json!({
        "id": id,
        "name": name,
        "priority": priority,
        "match": {"source_tenant": scope},
        "action": {"type": action},
    })
}

#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    summary = "Onboards a tenant: its record, its CA, a first admin and default policies, in one call",
    description = "Fleet admin only. Besides the tenant record (`id`, `name`, `quotas`) the body may carry `admin_key` (default true: create an admin API key, returned once), `admin_key_ttl` (`90d`), `oidc` (an OIDC provider: issuer, audience, jwks_uri, role_claim, default_role) and `default_policies` (default true: allow within the tenant at priority 999, deny from other tenants at 1000). Everything is checked before anything is written.",
    request_body(content = crate::openapi::NewTenant),
    responses(
        (status = 201, description = "The new tenant as stored, with `admin_key`, `certificate_authority`, `oidc_issuer` and `default_policies`.", body = crate::openapi::OnboardedTenant, headers(("x-config-version" = u64, description = "The fleet document's configuration version."), ("Location" = String, description = "Where the new tenant is."))),
        (status = 400, description = "The body is not a valid tenant or onboarding request; the message names the field.", body = crate::wire::ErrorBody),
        (status = 403, description = "Only a fleet admin onboards tenants.", body = crate::wire::ErrorBody),
        (status = 409, description = "A tenant with this id exists.", body = crate::wire::ErrorBody),
        (status = 413, description = "The body is too large.", body = crate::wire::ErrorBody),
        (status = 415, description = "The body is not JSON.", body = crate::wire::ErrorBody),
        (status = 421, description = "Only anchors write the fleet document: send the request to an anchor.", body = crate::wire::ErrorBody),
        (status = 422, description = "The tenant is not valid configuration; the message says what.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node holds no replicated configuration.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn onboard_tenant(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = caller_of(caller.clone());
    let mut body = crate::json_body(body, "tenant")?;
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object (a tenant: id, name, quotas)",
        ));
    };
    let mut extra = serde_json::Map::new();
    for field in ONBOARDING_FIELDS {
        if let Some(value) = map.remove(field) {
            extra.insert(field.to_string(), value);
        }
    }
    let onboarding: Onboarding = serde_json::from_value(Value::Object(extra))
        .map_err(|e| ApiError::bad_request(format!("invalid onboarding field: {e}")))?;
    if onboarding.oidc.as_ref().is_some_and(|o| !o.is_object()) {
        return Err(ApiError::bad_request(
            "oidc: must be an object (issuer, audience, jwks_uri, role_claim, default_role)",
        ));
    }
    if onboarding.admin_key == Some(false) && onboarding.admin_key_ttl.is_some() {
        return Err(ApiError::bad_request(
            "admin_key_ttl: given with admin_key false; drop one of them",
        ));
    }
    let id = map
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("id: required (the new tenant's id)"))?;
    if who.tenant.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only a fleet admin onboards tenants",
        ));
    }
    refuse_existing(&backend, &ConfigKind::Tenants, &caller, &None, &id).await?;
    // Checked like the real thing before the tenant exists, so a bad OIDC provider or key
    // lifetime never leaves half a tenant behind.
    if let Some(provider) = &onboarding.oidc {
        backend.check_oidc(&id, provider).await?;
    }
    if let Some(ttl) = &onboarding.admin_key_ttl {
        backend.check_key_ttl(ttl)?;
    }
    let created = crate::config::create_tenant(
        State(backend.clone()),
        caller,
        Ok(axum::extract::Query(Default::default())),
        Ok(Json(body)),
    )
    .await?;
    if created.status() != StatusCode::OK && created.status() != StatusCode::CREATED {
        return Ok(created);
    }
    match crate::config::without_if_match(finish(&backend, &who, &id, &onboarding)).await {
        Ok(onboarded) => {
            // Nothing may fail from here on: the admin key exists, and its secret is only in
            // this answer.
            let (mut value, version) = match backend
                .config_get(ConfigKind::Tenants, None, id.clone())
                .await
            {
                Ok(stored) => (stored.value, Some(stored.version)),
                Err(_) => (json!({"id": id}), None),
            };
            if let (Some(map), Ok(Value::Object(more))) =
                (value.as_object_mut(), serde_json::to_value(&onboarded))
            {
                map.extend(more);
            }
            let mut response = (StatusCode::CREATED, Json(value)).into_response();
            let headers = response.headers_mut();
            if let Some(version) = version {
                headers.insert("x-config-version", version.into());
            }
            if let Ok(location) = format!("/v1/tenants/{id}").parse() {
                headers.insert(axum::http::header::LOCATION, location);
            }
            Ok(response)
        }
        Err(failed) => {
            let undone = crate::config::without_if_match(undo(&backend, &who, &id, &failed)).await;
            let after = match undone {
                Ok(()) => "the tenant and what was made for it were removed again; fix the cause \
                           and retry"
                    .to_string(),
                Err(left) => format!(
                    "removing what was made failed too ({left}): delete tenant {id:?} and its \
                     policies by hand before retrying"
                ),
            };
            let err = failed.error;
            Err(ApiError::new(
                err.status,
                err.code,
                format!(
                    "onboarding tenant {id:?} failed at {} ({after}): {}",
                    failed.step, err.message
                ),
            ))
        }
    }
}

/// How far onboarding got before a step failed.
struct Failed {
    step: &'static str,
    error: ApiError,
    oidc: bool,
    policies: Vec<String>,
}

/// Removes what onboarding made before it failed, newest first (no admin key exists then: it
/// is made last).
async fn undo(backend: &Shared, who: &Caller, id: &str, failed: &Failed) -> Result<(), String> {
    let mut left = Vec::new();
    for policy in failed.policies.iter().rev() {
        if let Err(e) = delete_one(
            backend.clone(),
            ConfigKind::Routes,
            who.clone(),
            Some(id.to_string()),
            policy.clone(),
        )
        .await
        {
            left.push(format!("policy {policy}: {}", e.message));
        }
    }
    if failed.oidc
        && let Err(e) = backend.put_oidc(who, id, None).await
    {
        left.push(format!("OIDC provider: {}", e.message));
    }
    if let Err(e) = delete_one(
        backend.clone(),
        ConfigKind::Tenants,
        who.clone(),
        None,
        id.to_string(),
    )
    .await
    {
        left.push(format!("tenant record: {}", e.message));
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(left.join("; "))
    }
}

async fn finish(
    backend: &Shared,
    who: &Caller,
    id: &str,
    onboarding: &Onboarding,
) -> Result<Onboarded, Failed> {
    let mut failed = Failed {
        step: "",
        error: ApiError::internal(""),
        oidc: false,
        policies: Vec::new(),
    };
    let fail = |step: &'static str, error: ApiError, so_far: &Failed| Failed {
        step,
        error,
        oidc: so_far.oidc,
        policies: so_far.policies.clone(),
    };
    let certificate_authority = match backend.ensure_tenant_ca(id).await {
        Ok(ca) => ca,
        Err(e) => return Err(fail("creating the tenant CA", e, &failed)),
    };
    let oidc_issuer = match &onboarding.oidc {
        Some(provider) => {
            if let Err(e) = backend.put_oidc(who, id, Some(provider.clone())).await {
                return Err(fail("setting the OIDC provider", e, &failed));
            }
            failed.oidc = true;
            provider
                .get("issuer")
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        None => None,
    };
    if onboarding.default_policies.unwrap_or(true) {
        for policy in DEFAULT_POLICIES {
            match put_one(
                backend.clone(),
                ConfigKind::Routes,
                who.clone(),
                Some(id.to_string()),
                policy.to_string(),
                default_policy(policy),
            )
            .await
            {
                Ok(written) if written.status().is_success() => {
                    failed.policies.push(policy.to_string())
                }
                Ok(written) => {
                    let e = ApiError::internal(format!("answered {}", written.status()));
                    return Err(fail("writing the default policies", e, &failed));
                }
                Err(e) => return Err(fail("writing the default policies", e, &failed)),
            }
        }
    }
    // Last: once the key exists nothing else can fail, so its secret always reaches the caller.
    let admin_key = if onboarding.admin_key.unwrap_or(true) {
        let created = backend
            .create_key(
                who,
                CreateKey {
                    name: format!("{id} admin"),
                    role: "admin".into(),
                    tenant: Some(id.to_string()),
                    ttl: onboarding.admin_key_ttl.clone(),
                },
            )
            .await;
        match created {
            Ok(key) => Some(key),
            Err(e) => return Err(fail("creating the admin API key", e, &failed)),
        }
    } else {
        None
    };
    Ok(Onboarded {
        admin_key,
        certificate_authority,
        oidc_issuer,
        default_policies: failed.policies,
    })
}

/// One fleet duty as the answering node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Duty {
    /// `lifecycle` or `gc`.
    pub name: String,
    /// The anchor holding it (node id), as this node's replica of the fleet document says.
    pub holder: Option<String>,
    /// Its fencing epoch: one higher with every change of holder.
    pub epoch: u64,
    /// When the holder took it, Unix ms.
    pub acquired_at: Option<i64>,
    /// Whether the answering node holds it now.
    pub held_here: bool,
    /// When the answering node last ran it, Unix ms.
    pub last_run_at: Option<i64>,
    /// What that run did, or why it failed.
    pub last_result: Option<String>,
}

/// `GET /v1/fleet/duties` answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Duties {
    /// Every duty.
    pub items: Vec<Duty>,
}

#[utoipa::path(
    get,
    path = "/v1/fleet/duties",
    tag = "fleet",
    summary = "The fleet duties (node lifecycle, garbage collection): who holds each, its lease and fencing epoch",
    responses(
        (status = 200, description = "Every duty, as the answering node's replica of the fleet document says; `held_here` and `last_*` are the answering node's own.", body = Duties),
        (status = 403, description = "Only a fleet admin reads the fleet's duties.", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn list_duties(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
) -> Result<Json<Duties>, ApiError> {
    crate::require_fleet_admin(&caller)?;
    Ok(Json(Duties {
        items: backend.duties(),
    }))
}
