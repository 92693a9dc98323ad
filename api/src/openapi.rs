//! The OpenAPI 3.1 document of the API, generated from the code: every handler carries a
//! `#[utoipa::path]` attribute (parameters, bodies, every status it answers) and every wire type
//! derives `utoipa::ToSchema`, so the document cannot describe a route the router does not have
//! or a field a body does not carry.
//!
//! - [`ApiDoc`]: the document (`ApiDoc::openapi()`), with the security schemes (bearer API key
//!   or OIDC JWT, mutual TLS with a MIC) and the answers every authenticated route can give
//!   (401, 403, 429, 500) added by [`CommonResponses`].
//! - `GET /v1/openapi.json` serves it, without authentication (like `/healthz`).
//! - `api/openapi.json` is the committed copy; a test keeps it identical
//!   (`NEXUS_UPDATE_OPENAPI=1 cargo test -p nexus-api openapi` rewrites it).
//!
//! A few bodies are assembled as JSON by the node (configuration objects, snapshots, the config
//! status); the schema-only types at the end of this module describe them, and the live API
//! test (`tests/tests/openapi.rs`, Schemathesis) checks every answer against them.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder, Schema, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use nexus_crdt::{
    FirmwareTarget, FleetSettings, RouteAction, RouteMatch, RoutePolicy, Tenant, TenantQuotas,
};

/// The OpenAPI document of `/v1`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nexus Cloud API",
        description = "Management API of a Nexus Cloud fleet, served by every node under `/v1`. \
            Errors have one shape: `{\"error\":{\"code\":\"snake_case\",\"message\":\"...\"}}`. \
            Lists are pages: `{\"items\":[...],\"next_cursor\":\"...\"|null}` with `?limit=&cursor=`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::list_nodes,
        crate::get_node,
        crate::drain_node,
        crate::patch_labels,
        crate::decommission_node,
        crate::create_token,
        crate::list_tokens,
        crate::revoke_token,
        crate::list_mics,
        crate::issue_mic,
        crate::get_mic,
        crate::revoke_mic,
        crate::whoami,
        crate::promote,
        crate::list_anchors,
        crate::transparency::sth,
        crate::transparency::entries,
        crate::transparency::inclusion,
        crate::transparency::consistency,
        crate::transparency_mirrors,
        crate::config::list_routes,
        crate::config::create_route,
        crate::config::get_route,
        crate::config::put_route,
        crate::config::patch_route,
        crate::config::delete_route,
        crate::config::list_site_routes,
        crate::config::create_site_route,
        crate::config::get_site_route,
        crate::config::put_site_route,
        crate::config::patch_site_route,
        crate::config::delete_site_route,
        crate::config::list_firmware,
        crate::config::create_firmware,
        crate::config::get_firmware,
        crate::config::put_firmware,
        crate::config::patch_firmware,
        crate::config::delete_firmware,
        crate::config::list_tenants,
        crate::tenants::onboard_tenant,
        crate::config::get_tenant,
        crate::config::put_tenant,
        crate::config::patch_tenant,
        crate::config::delete_tenant,
        crate::config::list_fleet_policies,
        crate::config::create_fleet_policy,
        crate::config::get_fleet_policy,
        crate::config::put_fleet_policy,
        crate::config::patch_fleet_policy,
        crate::config::delete_fleet_policy,
        crate::tenants::list_duties,
        crate::config::get_settings,
        crate::config::put_settings,
        crate::config::patch_settings,
        crate::config::list_snapshots,
        crate::config::create_snapshot,
        crate::config::get_snapshot,
        crate::config::rollback,
        crate::config_status,
        crate::access::create_key,
        crate::access::list_keys,
        crate::access::get_key,
        crate::access::revoke_key,
        crate::access::get_oidc,
        crate::access::put_oidc,
        crate::access::delete_oidc,
        crate::access::audit,
        crate::usage::usage,
        crate::watch::watch,
        crate::healthz,
        crate::get_crl,
        crate::metrics_text,
        openapi_json,
    ),
    components(schemas(crate::wire::ErrorBody)),
    modifiers(&SecuritySchemes, &CommonResponses),
    security(("api_key" = []), ("mutual_tls" = [])),
    tags(
        (name = "nodes", description = "Nodes of the fleet: list, inspect, drain, decommission."),
        (name = "tokens", description = "Join tokens (anchors)."),
        (name = "trust", description = "Machine identity certificates (MICs), anchors, CRLs."),
        (name = "transparency", description = "The anchors' certificate transparency logs (RFC 6962)."),
        (name = "routes", description = "Route policies of a tenant, and of one site."),
        (name = "firmware", description = "Firmware targets of a tenant."),
        (name = "tenants", description = "Tenants (writes on anchors)."),
        (name = "fleet", description = "Fleet-wide route policies and settings (writes on anchors)."),
        (name = "config", description = "Replicated configuration: status, snapshots, rollback."),
        (name = "access", description = "API keys, a tenant's OIDC provider, the audit log."),
        (name = "watch", description = "Changes as they happen (Server-Sent Events)."),
        (name = "system", description = "Health, metrics, this document, the caller."),
    ),
)]
pub struct ApiDoc;

/// The document as pretty JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut text = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        text.push('\n');
        text
    })
}

/// This OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "system",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json", body = Object)),
)]
pub(crate) async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json().to_string(),
    )
        .into_response()
}

/// Registers the two ways to authenticate.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key (nxk_...) or OIDC JWT")
                    .description(Some(
                        "`Authorization: Bearer <secret>`: an API key (`POST /v1/keys`; the \
                         first fleet-admin key is in <data-dir>/admin.key of the fleet's first \
                         anchor) or a JWT from an OIDC issuer the caller's tenant configured.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "mutual_tls",
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate: the MIC of a node of this fleet (role `node`, \
                     read-only, confined to its tenant)."
                        .into(),
                ),
                extensions: None,
            },
        );
    }
}

/// Adds the answers every authenticated route can give, as shared response components: 401
/// (no or refused credentials), 403 (the caller's role may not do this), 429 (the tenant's rate
/// limit; `Retry-After` says when to retry) and 500 (this node failed, e.g. its storage).
pub struct CommonResponses;

const COMMON: [(&str, &str, &str); 4] = [
    (
        "401",
        "Unauthenticated",
        "No credentials, or credentials this fleet does not accept.",
    ),
    (
        "403",
        "Forbidden",
        "The caller's role may not do this; the message names the role needed.",
    ),
    (
        "429",
        "RateLimited",
        "The caller's tenant is over its API rate limit; retry after `Retry-After` seconds.",
    ),
    (
        "500",
        "Internal",
        "This node failed to answer (its storage, for example); the message says what.",
    ),
];

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (status, name, description) in COMMON {
            let mut response = ResponseBuilder::new().description(description).content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            );
            if status == "429" {
                response = response.header(
                    "Retry-After",
                    utoipa::openapi::HeaderBuilder::new()
                        .schema(u64::schema())
                        .description(Some("Seconds to wait before the next call."))
                        .build(),
                );
            }
            components
                .responses
                .insert(name.to_string(), RefOr::T(response.build()));
        }
        let public = vec![SecurityRequirement::default()];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security.as_ref() == Some(&public) {
                    // Public routes: neither credentials nor rate limits apply.
                    add_common(operation, &["500"]);
                } else {
                    add_common(operation, &["401", "403", "429", "500"]);
                }
            }
        }
    }
}

fn add_common(operation: &mut Operation, statuses: &[&str]) {
    for (status, name, _) in COMMON {
        if statuses.contains(&status) {
            operation
                .responses
                .responses
                .entry(status.to_string())
                .or_insert_with(|| RefOr::Ref(utoipa::openapi::Ref::from_response_name(name)));
        }
    }
}

// --- parameters -------------------------------------------------------------------------------

/// `?limit=&cursor=` of every list.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct PageParams {
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page, unchanged; absent for the first page.
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// `?limit=&cursor=&tenant=` of configuration lists.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ConfigListParams {
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page, unchanged; absent for the first page.
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
    /// The tenant whose objects to list (default, or empty: the answering node's tenant; a
    /// caller confined to a tenant sees only its own, another tenant's objects are 404).
    #[param(pattern = "^[A-Za-z0-9._-]{0,63}$")]
    tenant: Option<String>,
}

/// `?tenant=` of single configuration objects.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct TenantParam {
    /// The tenant the object belongs to (default, or empty: the answering node's tenant).
    #[param(pattern = "^[A-Za-z0-9._-]{0,63}$")]
    tenant: Option<String>,
}

// --- configuration objects as the API answers them ---------------------------------------------

/// The schema of `T` as an object (derived schemas of structs are objects).
fn object_of<T: PartialSchema>() -> Object {
    match T::schema() {
        RefOr::T(Schema::Object(object)) => object,
        _ => unreachable!("the schema of a struct is an object"),
    }
}

fn quarantined_property(object: &mut Object) {
    object.properties.insert(
        "quarantined".into(),
        RefOr::T(Schema::Array(
            ArrayBuilder::new()
                .items(String::schema())
                .description(Some(
                    "Why the object is held back (not applied), when it is: one reason each. \
                     Only in answers about one object.",
                ))
                .build(),
        )),
    );
}

/// Adds a required `id` property: 1..=`max` letters, digits, '-', '_' or '.'.
fn id_property(object: &mut Object, max: usize, description: &str) {
    object.properties.insert(
        "id".into(),
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!("^[A-Za-z0-9._-]{{1,{max}}}$")))
                .description(Some(description))
                .build(),
        )),
    );
    object.required.retain(|r| r != "id");
    object.required.push("id".into());
}

/// The body of a `PUT`: the path names the object, so the body leaves `id` out.
fn without_id(object: &mut Object) {
    object.properties.shift_remove("id");
    object.required.retain(|r| r != "id");
}

/// A JSON merge patch (RFC 7396) of an object: any of its fields (except `id`, which cannot
/// change); the merged result must be a valid object. `nested` names the fields holding
/// objects that merge field by field themselves (their schemas, patched the same way).
fn as_patch(object: &mut Object, nested: &[(&str, Object)]) {
    without_id(object);
    patch_fields(object, nested);
    object.description = Some(format!(
        "A JSON merge patch (RFC 7396): the fields to change (objects merge field by field, \
         `null` removes an optional field or a map entry). {}",
        object.description.take().unwrap_or_default()
    ));
}

fn patch_fields(object: &mut Object, nested: &[(&str, Object)]) {
    for (name, property) in object.properties.iter_mut() {
        let mut schema = std::mem::replace(property, RefOr::T(Schema::default()));
        if let Some((_, inner)) = nested.iter().find(|(field, _)| field == name) {
            let mut inner = inner.clone();
            patch_fields(&mut inner, &[]);
            schema = RefOr::T(Schema::Object(inner));
        } else if let RefOr::T(Schema::Object(map)) = &mut schema
            && let Some(values) = map.additional_properties.as_deref_mut()
            && let AdditionalProperties::RefOr(value) = values
        {
            // In a map, `null` removes the entry.
            *value = nullable(std::mem::replace(value, RefOr::T(Schema::default())));
        }
        // `null` removes a field: fine for those with a default (not required in the object).
        *property = if object.required.contains(name) {
            schema
        } else {
            nullable(schema)
        };
    }
    object.required.clear();
}

fn nullable(schema: RefOr<Schema>) -> RefOr<Schema> {
    RefOr::T(Schema::AnyOf(
        AnyOfBuilder::new()
            .item(schema)
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    ))
}

/// A schema derived from a model type's: the model as a body declares it, adjusted.
macro_rules! derived_schema {
    ($(#[doc = $doc:literal])* $name:ident from $base:ty, |$object:ident| $edit:block) => {
        $(#[doc = $doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                let mut $object = object_of::<$base>();
                $edit
                RefOr::T(Schema::Object($object))
            }
        }

        impl ToSchema for $name {
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                <$base as ToSchema>::schemas(schemas);
            }
        }
    };
}

derived_schema!(
    /// A route policy as stored, with `quarantined` when it is held back.
    StoredRoutePolicy from RoutePolicy, |o| { quarantined_property(&mut o); }
);
derived_schema!(
    /// `PUT` body of a route policy (the path names its id).
    PutRoutePolicy from RoutePolicy, |o| { without_id(&mut o); }
);
derived_schema!(
    /// `PATCH` body of a route policy.
    RoutePolicyPatch from RoutePolicy, |o| {
        as_patch(
            &mut o,
            &[("match", object_of::<RouteMatch>()), ("action", object_of::<RouteAction>())],
        );
    }
);
derived_schema!(
    /// A firmware target as stored, with `quarantined` when it is held back.
    StoredFirmwareTarget from FirmwareTarget, |o| { quarantined_property(&mut o); }
);
derived_schema!(
    /// `PUT` body of a firmware target (the path names its id).
    PutFirmwareTarget from FirmwareTarget, |o| { without_id(&mut o); }
);
derived_schema!(
    /// `PATCH` body of a firmware target.
    FirmwareTargetPatch from FirmwareTarget, |o| { as_patch(&mut o, &[]); }
);
derived_schema!(
    /// A tenant as stored: its record, with its `id`, and `quarantined` when it is held back.
    StoredTenant from Tenant, |o| {
        id_property(&mut o, 63, "The tenant's id.");
        quarantined_property(&mut o);
    }
);
derived_schema!(
    /// `POST /v1/tenants` body: the tenant record and its new `id`.
    NewTenant from Tenant, |o| {
        id_property(&mut o, 63, "The new tenant's id: 1..=63 letters, digits, '-', '_' or '.'.");
        let boolean = |description: &str| {
            RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some(description))
                    .build(),
            ))
        };
        o.properties.insert(
            "admin_key".into(),
            boolean("Create a first admin API key, returned once in the answer (default true)."),
        );
        o.properties.insert(
            "admin_key_ttl".into(),
            RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("The admin key's lifetime (`90d`); it never expires when absent."))
                    .build(),
            )),
        );
        o.properties.insert(
            "oidc".into(),
            RefOr::T(Schema::Object(object_of::<nexus_crdt::OidcProvider>())),
        );
        o.properties.insert(
            "default_policies".into(),
            boolean("Write the default policies: allow within the tenant (priority 999), deny from other tenants (1000). Default true."),
        );
    }
);
derived_schema!(
    /// `POST /v1/tenants` answer: the tenant as stored and what onboarding created.
    OnboardedTenant from Tenant, |o| {
        id_property(&mut o, 63, "The tenant's id.");
        quarantined_property(&mut o);
        let more = object_of::<crate::tenants::Onboarded>();
        for (name, schema) in more.properties {
            o.properties.insert(name, schema);
        }
    }
);
derived_schema!(
    /// `PUT /v1/tenants/{id}` body (the path names its id).
    PutTenant from Tenant, |o| { without_id(&mut o); }
);
derived_schema!(
    /// `PATCH /v1/tenants/{id}` body.
    TenantPatch from Tenant, |o| { as_patch(&mut o, &[("quotas", object_of::<TenantQuotas>())]); }
);
derived_schema!(
    /// `PATCH /v1/fleet/settings` body.
    FleetSettingsPatch from FleetSettings, |o| { as_patch(&mut o, &[]); }
);

/// A page of route policies (effective ones: quarantined policies are left out).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RoutePolicyPage {
    /// The policies of this page, by id.
    items: Vec<StoredRoutePolicy>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
    /// The document's configuration version (also in `x-config-version`).
    config_version: u64,
}

/// A page of firmware targets (effective ones).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FirmwareTargetPage {
    /// The targets of this page, by id.
    items: Vec<StoredFirmwareTarget>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
    /// The fleet document's configuration version (also in `x-config-version`).
    config_version: u64,
}

/// A page of tenants (effective ones).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TenantPage {
    /// The tenants of this page, by id.
    items: Vec<StoredTenant>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
    /// The fleet document's configuration version (also in `x-config-version`).
    config_version: u64,
}

/// A named state of a configuration document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Snapshot {
    /// Snapshot id.
    id: String,
    /// `fleet` or `tenant/<id>`.
    document: String,
    /// Display name.
    name: String,
    /// The document's heads when it was taken (change hashes, hex).
    heads: Vec<String>,
    /// The document's configuration version then.
    version: u64,
    /// Who took it.
    created_by: String,
    /// When, Unix milliseconds.
    created_at: i64,
}

/// The snapshots of the documents this node holds, visible to the caller.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SnapshotList {
    /// The snapshots.
    items: Vec<Snapshot>,
}

/// The outcome of a rollback: the snapshot's state written as a new change.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Rollback {
    /// The snapshot restored.
    snapshot: String,
    /// Its document.
    document: String,
    /// Whether the document changed (false: it already had that state).
    changed: bool,
    /// The document's configuration version now.
    version: u64,
}

/// `GET /v1/config/status`: the configuration version spread over the fleet, and this node's.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConfigStatus {
    /// Per document, the states the fleet's nodes report (in gossip).
    documents: Vec<DocumentSpread>,
    /// The answering node.
    node_id: String,
    /// The documents this node holds.
    local: Vec<LocalDocument>,
}

/// One document's states across the fleet.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DocumentSpread {
    /// `fleet` or `tenant/<id>`.
    document: String,
    /// True when every node reporting it has one state.
    converged: bool,
    /// The states, each with the nodes in it.
    states: Vec<DocumentState>,
}

/// One state of a document and the nodes that hold it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DocumentState {
    /// Configuration version.
    version: u64,
    /// Digest of the document's heads, hex.
    heads_digest: String,
    /// How many nodes report it.
    nodes: u64,
    /// Those nodes, sorted.
    node_ids: Vec<String>,
}

/// A document as this node holds it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LocalDocument {
    /// `fleet` or `tenant/<id>`.
    document: String,
    /// Configuration version.
    version: u64,
    /// Digest of the document's heads, hex.
    heads_digest: String,
    /// Objects held back, with why.
    quarantined: Vec<QuarantinedObject>,
}

/// An object the configuration validator holds back.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct QuarantinedObject {
    /// `<collection>.<key>`.
    object: String,
    /// What is wrong with it.
    reasons: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document (`api/openapi.json`) is the one the code generates.
    #[test]
    fn committed_openapi_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let generated = json();
        if std::env::var("NEXUS_UPDATE_OPENAPI").as_deref() == Ok("1") {
            std::fs::write(&path, generated).expect("write api/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "api/openapi.json is not the document the code generates (an annotation, a wire \
             type or a route changed): regenerate it with \
             `NEXUS_UPDATE_OPENAPI=1 cargo test -p nexus-api openapi` and commit the result"
        );
    }

    /// OpenAPI 3.1, one error shape, the shared answers on authenticated routes only.
    #[test]
    fn document_is_openapi_3_1_with_shared_answers() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        assert!(doc["components"]["securitySchemes"]["mutual_tls"].is_object());
        let get_node = &doc["paths"]["/v1/nodes/{id}"]["get"];
        for status in ["200", "400", "401", "403", "404", "429", "500"] {
            assert!(
                get_node["responses"][status].is_object(),
                "GET /v1/nodes/{{id}} documents {status}"
            );
        }
        assert_eq!(
            doc["paths"]["/healthz"]["get"]["security"],
            serde_json::json!([{}])
        );
    }
}
