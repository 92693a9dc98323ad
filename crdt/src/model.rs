//! The typed configuration models and how they map onto automerge.
//!
//! Two kinds of document exist (see [`DocId`](crate::DocId)):
//!
//! * [`FleetDoc`] — one per fleet: settings, tenants, anchors, revocations, fleet-wide policies.
//! * [`TenantDoc`] — one per tenant: route policies, firmware targets, node overrides, and the
//!   site-scoped objects (`site_routes`, `site_node_overrides`, keyed `<site>/<id>`).
//!
//! Every collection is a map keyed by object id, never a list: two concurrent edits to different
//! objects then touch different map keys and both survive the merge, and concurrent edits to
//! different fields of one object merge field by field. A list would merge by position and could
//! interleave or duplicate objects.
//!
//! The serde names and the automerge keys are the same, so a document, its JSON view and the
//! API wire types line up. Field names follow the `RoutePolicy` data model of REQUIREMENTS.md.
//!
//! API bodies parse into these types with `deny_unknown_fields`, so a misspelt field is a 400,
//! not silently dropped; hydration from automerge is unaffected and ignores unknown keys.
//!
//! **Schema evolution.** Optional fields carry `missing = "Default::default"`, so a document
//! written by an older node (without the field) still hydrates; unknown keys written by a newer
//! node are ignored on hydration and left alone on reconciliation.

use std::collections::BTreeMap;

use autosurgeon::{Hydrate, Reconcile};
use nexus_ca::NodeId;
use serde::{Deserialize, Serialize};

/// The fleet document: everything every node of the fleet replicates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct FleetDoc {
    /// Fleet-wide settings.
    #[autosurgeon(missing = "Default::default")]
    pub settings: FleetSettings,
    /// Tenants by tenant id.
    pub tenants: BTreeMap<String, Tenant>,
    /// Anchor nodes by node id (32 hex characters).
    pub anchors: BTreeMap<String, Anchor>,
    /// Revoked MICs by serial (lowercase hex). Placeholder until revocation moves into the
    /// replicated configuration; CRLs are authoritative today.
    pub revocations: BTreeMap<String, Revocation>,
    /// Fleet-wide route policies by id; they apply to every tenant and carry an empty
    /// `tenant_id`.
    pub policies: BTreeMap<String, RoutePolicy>,
    /// Named states of this document, by snapshot id.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Every node admitted to the fleet, by node id, as the anchors that admitted them record
    /// it: what configuration may refer to ([`KnownNodes`](crate::KnownNodes) comes from
    /// here, so every replica validates against the same node set).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub members: BTreeMap<String, Member>,
    /// Fleet-wide API keys (role `fleet-admin`) by key id; only their hashes are stored.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKeyRecord>,
    /// Tenant CAs by `<tenant>/<anchor node id>`: each anchor's CA for one tenant, under the
    /// anchor's intermediate. Replicated so every node can check MICs that chain through them.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub tenant_cas: BTreeMap<String, TenantCa>,
    /// Fleet duties (garbage collection, node lifecycle, …) by name: who holds each, until when,
    /// and its fencing epoch.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub duties: BTreeMap<String, DutyLease>,
}

/// One anchor's CA for one tenant (keyed `<tenant>/<anchor node id>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct TenantCa {
    /// The tenant.
    pub tenant: String,
    /// The anchor holding its key (node id, 32 hex characters).
    pub anchor: String,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// When it was created, Unix milliseconds.
    pub created_at: i64,
}

/// Who holds a fleet duty (keyed by duty name).
///
/// The holder keeps its duty while gossip shows it alive: its heartbeats renew the lease, so
/// holding costs no writes. Another anchor takes over only after the holder was silent for
/// the lease, with the epoch one higher. A holder that finds a higher epoch, or another holder,
/// stops (fencing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct DutyLease {
    /// The holding anchor (node id, 32 hex characters).
    pub holder: String,
    /// Fencing epoch: strictly increases with every change of holder.
    pub epoch: u64,
    /// When this holder took the duty, Unix milliseconds.
    pub acquired_at: i64,
    /// How long the holder may be silent before another anchor takes the duty over, ms.
    pub lease_ms: i64,
}

/// An API key as the configuration records it (keyed by key id). The secret itself is never
/// stored: only its SHA-256, which is enough because secrets are 256 random bits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// Display name, 1..=128 characters.
    pub name: String,
    /// `fleet-admin` (fleet document only), or `admin`, `operator`, `viewer` (tenant documents).
    pub role: String,
    /// SHA-256 of the secret, 64 lowercase hex characters.
    pub key_hash: String,
    /// Who created it (the caller's identity).
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_at: i64,
    /// When it stops working, Unix milliseconds (`None`: never).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// When it was revoked, Unix milliseconds. Revoked keys stay listed, refused.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// An OpenID Connect issuer whose bearer tokens a tenant accepts (keyed by provider id).
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Reconcile,
    Hydrate,
    utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// The issuer, exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// The audience tokens must name in `aud`.
    pub audience: String,
    /// Where the issuer's signing keys are published (a JWKS document).
    pub jwks_uri: String,
    /// The claim that carries the caller's role (`admin`, `operator` or `viewer`).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub role_claim: Option<String>,
    /// The role of a token without that claim (`None`: such tokens are refused).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub default_role: Option<String>,
}

/// A node of the fleet as its admission recorded it (keyed by node id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct Member {
    /// `anchor` or `node`, from its newest MIC (a promotion changes it).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub role: String,
    /// Its tenant.
    pub tenant: String,
    /// Its site (may be empty).
    pub site: String,
    /// When it was admitted, Unix milliseconds.
    pub enrolled_at: i64,
    /// When an operator decommissioned it, Unix milliseconds; configuration may no longer
    /// refer to it.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub decommissioned_at: Option<i64>,
    /// Set by the `lifecycle` duty when the node has been offline longer than the fleet's
    /// offline grace: since when it is offline, Unix milliseconds. Cleared when it is back.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub offline_since: Option<i64>,
    /// Set by the `lifecycle` duty once a decommissioned node's grace has passed: it is gone
    /// from the fleet, and the `gc` duty removes configuration that still names it. The record
    /// stays as a tombstone, so the node is never recorded again.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub removed_at: Option<i64>,
}

impl FleetDoc {
    /// What the fleet's anchors certified about `node` (role, tenant, site), if it is a member
    /// that is not decommissioned. This, not what a node says of itself in gossip, decides which
    /// documents may be sent to it.
    pub fn member_facts(&self, node: &NodeId) -> Option<crate::AuthorFacts> {
        let m = self.members.get(&node.to_hex())?;
        if m.decommissioned_at.is_some() {
            return None;
        }
        Some(crate::AuthorFacts {
            node_id: *node,
            role: m.role.parse().unwrap_or(nexus_ca::Role::Node),
            tenant: m.tenant.clone(),
            site: m.site.clone(),
        })
    }

    /// The nodes configuration may refer to: every member not decommissioned.
    pub fn known_nodes(&self) -> crate::KnownNodes {
        self.members
            .iter()
            .filter(|(_, m)| m.decommissioned_at.is_none())
            .filter_map(|(id, m)| {
                Some((
                    id.parse().ok()?,
                    crate::KnownNode {
                        tenant: m.tenant.clone(),
                        site: m.site.clone(),
                    },
                ))
            })
            .collect()
    }
}

/// A named state of one document: its heads when the snapshot was taken. Rolling back writes
/// the document's state at those heads as a new change, so a rollback replicates, is signed
/// and can itself be rolled back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct Snapshot {
    /// Display name, 1..=128 characters.
    pub name: String,
    /// The document's heads (change hashes, 64 lowercase hex characters each), sorted.
    pub heads: Vec<String>,
    /// The document's config version at the time.
    pub version: u64,
    /// Who took it (the caller's identity).
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_at: i64,
}

/// Fleet-wide settings. Every field is optional: `None` means the node's built-in default.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Reconcile,
    Hydrate,
    utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// Heartbeat interval in milliseconds, 100..=600,000.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    #[schema(minimum = 100, maximum = 600_000)]
    pub heartbeat_interval_ms: Option<u64>,
    /// How many peers a committed change is pushed to directly, 1..=64.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub push_fanout: Option<u64>,
    /// Anti-entropy interval in milliseconds, 100..=3,600,000.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    #[schema(minimum = 100, maximum = 3_600_000)]
    pub anti_entropy_interval_ms: Option<u64>,
}

/// A tenant as the fleet document records it.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Reconcile,
    Hydrate,
    utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Display name, 1..=128 characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
    /// Creation time, Unix milliseconds (0 in a request: now).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub created_at: i64,
    /// Quotas: `max_nodes` is enforced by anchors at join; connections and bandwidth by every
    /// node's data plane (per node); the API rate on every node.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub quotas: TenantQuotas,
}

/// Per-tenant quotas. `None` means unlimited; a set value must be positive.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Reconcile,
    Hydrate,
    utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct TenantQuotas {
    /// Maximum number of nodes.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_nodes: Option<u64>,
    /// Maximum concurrent connections.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_connections: Option<u64>,
    /// Maximum bandwidth in megabits per second.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_bandwidth_mbps: Option<u64>,
    /// API requests per second the tenant's callers may make on each node (token bucket).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    #[schema(minimum = 1)]
    pub api_requests_per_second: Option<u64>,
    /// Burst of the API rate limit (default: one second's worth).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    #[schema(minimum = 1)]
    pub api_burst: Option<u64>,
}

/// An anchor node as the fleet document records it (keyed by node id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct Anchor {
    /// The anchor's site (may be empty).
    pub site: String,
    /// When it became an anchor, Unix milliseconds.
    pub added_at: i64,
}

/// A revoked MIC (placeholder; keyed by serial).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct Revocation {
    /// The node the MIC was issued to.
    #[autosurgeon(with = "node_id")]
    pub node_id: NodeId,
    /// Free-form reason (a CRL reason name).
    pub reason: String,
    /// Revocation time, Unix milliseconds.
    pub revoked_at: i64,
}

/// A tenant's document: what the tenant's nodes (and the anchors) replicate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct TenantDoc {
    /// The tenant this document belongs to; fixed at genesis.
    pub tenant_id: String,
    /// Tenant-wide route policies by id.
    pub routes: BTreeMap<String, RoutePolicy>,
    /// Firmware targets by id.
    pub firmware_targets: BTreeMap<String, FirmwareTarget>,
    /// Per-node overrides, keyed by node id (32 hex characters).
    pub node_overrides: BTreeMap<String, NodeOverride>,
    /// Site-scoped route policies, keyed `<site>/<route id>`; see [`site_key`].
    ///
    /// Flat (not a map per site) on purpose: a per-site container created concurrently by two
    /// nodes would be two conflicting maps under one key, and the merge would hide one of them
    /// with all its routes. Keys are site-prefixed so a site-scoped writer's rights are a
    /// prefix check on the keys its change touches ([`authorize`](crate::authorize)).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub site_routes: BTreeMap<String, RoutePolicy>,
    /// Overrides for nodes set by site-scoped writers, keyed `<site>/<node id>`.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub site_node_overrides: BTreeMap<String, NodeOverride>,
    /// Named states of this document, by snapshot id.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub snapshots: BTreeMap<String, Snapshot>,
    /// The tenant's API keys by key id (hashes only).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKeyRecord>,
    /// OpenID Connect issuers the tenant's callers may authenticate with, by provider id.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub oidc: BTreeMap<String, OidcProvider>,
}

fn enabled_by_default() -> bool {
    true
}

/// The map key of a site-scoped object: `<site>/<id>`. Site names and object ids never contain
/// `/`, so the key splits back unambiguously ([`split_site_key`]).
pub fn site_key(site: &str, id: &str) -> String {
    format!("{site}/{id}")
}

/// Splits a site-scoped key into `(site, id)`.
pub fn split_site_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

impl TenantDoc {
    /// The site-scoped routes of `site`, by route id.
    pub fn routes_of_site<'a>(
        &'a self,
        site: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a RoutePolicy)> + 'a {
        self.site_routes.iter().filter_map(move |(k, r)| {
            split_site_key(k).and_then(|(s, id)| (s == site).then_some((id, r)))
        })
    }
}

/// A route policy (REQUIREMENTS.md data model `RoutePolicy`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Reconcile, Hydrate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    description = "A route policy: which traffic it matches and what happens to that traffic; the lowest priority wins."
)]
pub struct RoutePolicy {
    /// Policy id; equals its map key.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub id: String,
    /// Display name, 1..=128 characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
    /// Owning tenant; the document's tenant, or empty for a fleet-wide policy.
    #[serde(default)]
    #[schema(read_only)]
    pub tenant_id: String,
    /// Lower wins; 0..=[`PRIORITY_MAX`](crate::PRIORITY_MAX).
    #[schema(maximum = 1000)]
    pub priority: u32,
    /// What traffic the policy applies to (absent: everything).
    #[serde(rename = "match", default)]
    #[autosurgeon(rename = "match")]
    pub matches: RouteMatch,
    /// What happens to matching traffic.
    pub action: RouteAction,
    /// Disabled policies are kept but not compiled into the data plane.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Creation time, Unix milliseconds (0 in a request: now).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub created_at: i64,
}

/// Which traffic a route policy matches. An empty (or absent) list matches anything.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Reconcile,
    Hydrate,
    utoipa::ToSchema,
)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    /// Source nodes (same tenant).
    #[autosurgeon(with = "node_id_list")]
    #[schema(value_type = Vec<String>)]
    pub source_node_ids: Vec<NodeId>,
    /// Capabilities the destination must have.
    pub dest_capabilities: Vec<String>,
    /// Stream modes, a subset of {RO, RU, BE, PR}.
    pub stream_modes: Vec<StreamMode>,
    /// Message types.
    pub message_types: Vec<u16>,
    /// Whose nodes the source must be: `own` (the policy's tenant) or `other` (any other
    /// tenant's); absent: anyone's. A tenant's default policies use it (allow within the
    /// tenant, deny across tenants).
    #[autosurgeon(missing = "Default::default")]
    pub source_tenant: Option<SourceTenant>,
}

/// Whose nodes a route policy's source must be (see [`RouteMatch::source_tenant`]).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Reconcile,
    Hydrate,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SourceTenant {
    /// Nodes of the policy's own tenant.
    #[autosurgeon(rename = "own")]
    Own,
    /// Nodes of any other tenant.
    #[autosurgeon(rename = "other")]
    Other,
}

/// A stream mode.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Reconcile,
    Hydrate,
    utoipa::ToSchema,
)]
pub enum StreamMode {
    /// Reliable, ordered.
    RO,
    /// Reliable, unordered.
    RU,
    /// Best effort.
    BE,
    /// Priority.
    PR,
}

/// What a route policy does (REQUIREMENTS.md: `action {type, rate_limit, redirect_node_id,
/// weight_override}`).
///
/// Kept flat, as the data model has it: concurrent edits then merge field by field, and
/// combinations that make no sense after a merge (a `redirect` without a target) are caught by
/// validation and quarantined instead of being silently dropped by the merge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Reconcile, Hydrate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    description = "What a route policy does: `type`, with `rate_limit` for `ratelimit` and `redirect_node_id` for `redirect` (absent otherwise), and scoring-weight overrides."
)]
pub struct RouteAction {
    /// The action type.
    #[serde(rename = "type")]
    #[autosurgeon(rename = "type")]
    pub kind: ActionType,
    /// Messages per second; required for `ratelimit`, absent otherwise.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub rate_limit: Option<u64>,
    /// Redirect target (a node of the same tenant); required for `redirect`, absent otherwise.
    #[autosurgeon(with = "node_id_opt")]
    #[schema(value_type = Option<String>, pattern = "^[0-9a-fA-F]{32}$")]
    #[serde(default)]
    pub redirect_node_id: Option<NodeId>,
    /// Scoring-weight overrides by weight name.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub weight_override: BTreeMap<String, f64>,
}

impl RoutePolicy {
    /// An enabled policy named after its id, with no tenant yet (a write fills it in) and no
    /// creation time (0: now).
    pub fn new(id: &str, priority: u32, matches: RouteMatch, action: RouteAction) -> RoutePolicy {
        RoutePolicy {
            id: id.to_string(),
            name: id.to_string(),
            tenant_id: String::new(),
            priority,
            matches,
            action,
            enabled: true,
            created_at: 0,
        }
    }
}

impl RouteAction {
    /// An action of `kind` with no parameters.
    pub fn new(kind: ActionType) -> RouteAction {
        RouteAction {
            kind,
            rate_limit: None,
            redirect_node_id: None,
            weight_override: BTreeMap::new(),
        }
    }
}

/// The action type of a route policy.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    Reconcile,
    Hydrate,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ActionType {
    /// Let matching traffic through.
    #[autosurgeon(rename = "allow")]
    Allow,
    /// Drop matching traffic.
    #[autosurgeon(rename = "deny")]
    Deny,
    /// Limit matching traffic to `rate_limit` messages per second.
    #[autosurgeon(rename = "ratelimit")]
    Ratelimit,
    /// Send matching traffic to `redirect_node_id`.
    #[autosurgeon(rename = "redirect")]
    Redirect,
}

/// A firmware rollout target (NCC-FC-004; the rollout itself comes later).
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
#[schema(
    description = "A firmware target: the version and image for the nodes its selector picks, and how fast to roll it out."
)]
pub struct FirmwareTarget {
    /// Target id; equals its map key.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub id: String,
    /// Firmware version, 1..=64 characters of `[0-9A-Za-z.+-]`.
    #[schema(pattern = "^[0-9A-Za-z.+-]{1,64}$")]
    pub version: String,
    /// SHA-256 of the signed image, 64 lowercase hex characters.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub image_sha256: String,
    /// Node label selector (all must match); empty selects every node of the tenant.
    pub selector: BTreeMap<String, String>,
    /// Nodes upgraded at once, 1..=10,000.
    #[schema(minimum = 1, maximum = 10_000)]
    pub batch_size: u32,
    /// Share of selected nodes that may be down at once, 0..=100.
    #[schema(maximum = 100)]
    pub max_unavailable_percent: u8,
    /// How long a node has to report healthy after flashing, seconds, 1..=3,600.
    #[schema(minimum = 1, maximum = 3600)]
    pub health_timeout_s: u32,
    /// Creation time, Unix milliseconds (0 in a request: now).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub created_at: i64,
}

/// Per-node adjustments to the tenant's policies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct NodeOverride {
    /// Route policy ids not applied on this node.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub disabled_routes: Vec<String>,
    /// Scoring-weight overrides for this node.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub weight_override: BTreeMap<String, f64>,
    /// Operator labels of this node, on top of those it joined with (`PATCH
    /// /v1/nodes/{id}/labels`).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Automerge mapping for a [`NodeId`]: its 32-hex-character string.
pub(crate) mod node_id {
    use autosurgeon::{Hydrate, HydrateError, Prop, ReadDoc, Reconciler};
    use nexus_ca::NodeId;

    pub(crate) fn parse(s: &str) -> Result<NodeId, HydrateError> {
        s.parse().map_err(|_| {
            HydrateError::unexpected("a node id (32 hex characters)", format!("{s:?}"))
        })
    }

    pub(crate) fn hydrate<D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<NodeId, HydrateError> {
        parse(&String::hydrate(doc, obj, prop)?)
    }

    pub(crate) fn reconcile<R: Reconciler>(id: &NodeId, mut reconciler: R) -> Result<(), R::Error> {
        reconciler.str(id.to_hex())
    }
}

/// Automerge mapping for an optional [`NodeId`]: a string, or null/absent for `None`.
pub(crate) mod node_id_opt {
    use autosurgeon::{Hydrate, HydrateError, Prop, ReadDoc, Reconcile, Reconciler};
    use nexus_ca::NodeId;

    pub(crate) fn hydrate<D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<Option<NodeId>, HydrateError> {
        let Some(value) = doc.get(obj, &prop)?.map(|(v, _)| v) else {
            return Ok(None);
        };
        if value.is_null() {
            return Ok(None);
        }
        let s = Option::<String>::hydrate(doc, obj, prop)?;
        s.as_deref().map(super::node_id::parse).transpose()
    }

    pub(crate) fn reconcile<R: Reconciler>(
        id: &Option<NodeId>,
        reconciler: R,
    ) -> Result<(), R::Error> {
        id.map(|id| id.to_hex()).reconcile(reconciler)
    }
}

/// Automerge mapping for a list of [`NodeId`]s: a list of strings.
pub(crate) mod node_id_list {
    use autosurgeon::{Hydrate, HydrateError, Prop, ReadDoc, Reconcile, Reconciler};
    use nexus_ca::NodeId;

    pub(crate) fn hydrate<D: ReadDoc>(
        doc: &D,
        obj: &automerge::ObjId,
        prop: Prop<'_>,
    ) -> Result<Vec<NodeId>, HydrateError> {
        Vec::<String>::hydrate(doc, obj, prop)?
            .iter()
            .map(|s| super::node_id::parse(s))
            .collect()
    }

    pub(crate) fn reconcile<R: Reconciler>(ids: &[NodeId], reconciler: R) -> Result<(), R::Error> {
        ids.iter()
            .map(|id| id.to_hex())
            .collect::<Vec<_>>()
            .reconcile(reconciler)
    }
}
