//! API wire types: the JSON bodies of `/v1`. Separate from internal types so the API evolves
//! backward-compatibly on its own schedule.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    /// 32 lowercase hex chars.
    pub node_id: String,
    /// Host name.
    pub hostname: String,
    /// `anchor` or `node`.
    pub role: String,
    /// Site.
    pub site: String,
    /// Tenant.
    pub tenant_id: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Where to reach it.
    pub addresses: Addresses,
    /// `online`, `degraded`, `offline`, `draining` or `decommissioned`.
    pub status: String,
    /// Health summary the node publishes: `ok`, the failing check, or `unknown`.
    pub health: String,
    /// Nexus link software version.
    pub nexlink_version: String,
    /// Nexus router version.
    pub nexroute_version: String,
    /// NIC model (the data plane's driver or device model).
    pub nic_model: String,
    /// Data-plane NIC backend: `dpdk`, `af_packet` or `memory` (empty: unknown).
    #[serde(default)]
    pub nic_backend: String,
    /// The node's data plane as it last published it (every few seconds over gossip).
    #[serde(default)]
    pub dataplane: Option<DataplaneSummary>,
    /// Firmware version.
    pub firmware_version: String,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Trust level.
    pub trust_level: u8,
    /// Fleet configuration version the node runs.
    pub config_version: u64,
    /// RFC 3339: when the answering node last saw this node's heartbeat advance.
    pub last_heartbeat: Option<String>,
    /// RFC 3339: enrollment time.
    pub created_at: Option<String>,
    /// RFC 3339: last status change seen by the answering node.
    pub updated_at: String,
    /// Incarnation (process start, unix ms).
    pub generation: u64,
    /// Serial of the MIC the node uses (hex).
    #[serde(default)]
    pub certificate_serial: Option<String>,
    /// RFC 3339: when that MIC expires (the node renews it before).
    #[serde(default)]
    pub certificate_expires_at: Option<String>,
    /// Whether that MIC is on a revocation list the answering node holds.
    #[serde(default)]
    pub certificate_revoked: bool,
    /// RFC 3339: set once the node has been offline longer than the fleet's offline grace
    /// (`duties.offline_grace` on anchors): since when it is offline. Cleared when it returns.
    #[serde(default)]
    pub offline_since: Option<String>,
}

/// What a node's data plane reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DataplaneSummary {
    /// `dpdk`, `af_packet` or `memory`.
    pub backend: String,
    /// The device (`net_ring0 (port 0)`, an interface name).
    pub device: String,
    /// Frames received.
    pub rx_packets: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Frames delivered to this node.
    pub local_packets: u64,
    /// Frames dropped, by reason (`parse`, `deny`, `ratelimit`, `no_route`, `hop_limit`,
    /// `tx_full`, `quota_connections`, `quota_bandwidth`).
    pub drops: BTreeMap<String, u64>,
    /// Flows seen in the last 30 s (approximate).
    pub active_flows: u64,
    /// Connections (source node, stream) open now, as the tenant's connection quota counts them.
    #[serde(default)]
    pub connections: u64,
    /// Route-policy rules compiled in.
    pub rules: u64,
    /// Destinations in the forwarding table.
    pub routes: u64,
    /// Generation of the classifier in force (+1 per recompile).
    pub policy_generation: u64,
    /// Configuration versions it was compiled from (`fleet:12,tenant/acme:40`).
    pub policy_version: String,
    /// Unix ms when this summary was taken.
    pub at_ms: u64,
}

/// Node addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Addresses {
    /// HTTP API.
    pub api: Option<String>,
    /// Gossip (UDP).
    pub gossip: Option<String>,
    /// QUIC.
    pub quic: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// Items of this page.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /v1/tokens` body. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Lifetime in seconds (default 3600, 1 ..= 2,592,000).
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl_seconds: Option<u64>,
    /// How many nodes may join with it (default 1, 1 ..= 10,000).
    #[schema(minimum = 1, maximum = 10_000)]
    pub uses: Option<u32>,
    /// Tenant the joining nodes belong to (default `default`).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$")]
    pub tenant: Option<String>,
    /// Site the joining nodes belong to (default: the joining node's own `--site`, else `default`).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$")]
    pub site: Option<String>,
    /// Labels given to joining nodes.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A token just created: the only time its secret form is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The join token to hand to `nexus join`.
    pub token: String,
    /// Its metadata.
    #[serde(flatten)]
    pub info: Token,
}

/// A join token's metadata (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Token {
    /// Token id.
    pub id: String,
    /// Tenant of joining nodes.
    pub tenant: String,
    /// Site of joining nodes, if fixed by the token.
    pub site: Option<String>,
    /// Labels of joining nodes.
    pub labels: BTreeMap<String, String>,
    /// Allowed joins.
    pub max_uses: u32,
    /// Joins so far.
    pub uses: u32,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// `active`, `expired`, `used` or `revoked`.
    pub state: String,
}

/// `GET /healthz` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    /// This node.
    pub node_id: String,
    /// Fleet id.
    pub fleet_id: String,
    /// `anchor` or `node`.
    pub role: String,
    /// Check name → `ok` or what failed.
    pub checks: BTreeMap<String, String>,
}

/// Error body: `{ "error": { "code", "message" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Machine-readable code and human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case.
    pub code: String,
    /// What was wrong and what to do.
    pub message: String,
}

/// `POST /v1/mics/csr` body: ask an anchor for a MIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// PKCS#10 CSR (PEM) with an ed25519 key. Its subject CN, if set, must be the node id of
    /// that key.
    pub csr_pem: String,
    /// Tenant (default `default`).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$")]
    pub tenant: Option<String>,
    /// Site (default `default`).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$")]
    pub site: Option<String>,
    /// `node` (default) or `anchor`.
    #[schema(pattern = "^(node|anchor)$")]
    pub role: Option<String>,
}

/// A machine identity certificate an anchor issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mic {
    /// Serial, lowercase hex (as `openssl x509 -serial` shows it, lowercased).
    pub serial: String,
    /// The node it certifies.
    pub node_id: String,
    /// How it was issued: `anchor`, `join`, `renewal` or `csr`.
    pub kind: String,
    /// RFC 3339 issue time.
    pub issued_at: String,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// RFC 3339 revocation time, if revoked.
    pub revoked_at: Option<String>,
    /// Revocation reason, if revoked.
    pub revoke_reason: Option<String>,
    /// The certificate, PEM.
    pub certificate_pem: String,
}

/// A MIC just issued from a CSR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuedMic {
    /// The certificate.
    #[serde(flatten)]
    pub mic: Mic,
    /// Issuing anchor intermediate, PEM (append to the certificate to form the chain).
    pub intermediate_pem: String,
    /// Fleet root, PEM.
    pub root_pem: String,
}

/// `POST /v1/mics/{serial}/revoke` body (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// `unspecified` (default), `key_compromise`, `superseded` or `cessation_of_operation`.
    #[schema(pattern = "^(unspecified|key_compromise|superseded|cessation_of_operation)$")]
    pub reason: Option<String>,
}

/// The outcome of a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revoked {
    /// The certificate, now revoked.
    #[serde(flatten)]
    pub mic: Mic,
    /// Number of the CRL that lists it.
    pub crl_number: u64,
}

/// Who is calling, as the API authenticated them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Caller {
    /// `api-key:<key id>`, `user:<issuer>#<subject>` (OIDC) or `node:<node id>`.
    pub identity: String,
    /// `fleet-admin`, `admin`, `operator`, `viewer` or `node`.
    pub role: String,
    /// Tenant the caller is confined to (`None`: the whole fleet).
    pub tenant: Option<String>,
}

/// `POST /v1/anchors` body: make a node an anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The node to promote (32 hex chars).
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub node_id: String,
}

/// An anchor, or a node on its way to becoming one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Anchor {
    /// The node.
    pub node_id: String,
    /// `active` (an anchor now) or `pending` (promotion authorized, not yet taken up).
    pub state: String,
    /// Its status in the answering node's view, if known.
    pub status: Option<String>,
    /// Its API address, if known.
    pub api: Option<String>,
    /// Its QUIC address (where nodes join), if known.
    pub quic: Option<String>,
}

/// `GET /v1/transparency/sth`: an anchor's signed tree head, with what a client needs to check
/// the signature on its own.
///
/// The first five fields are the JSON of `nexus_ca::tlog::SignedTreeHead`; `signing_input` is the exact
/// byte string signed (`"nexus-sth-v1\0"`, log id length and bytes, size, timestamp, root), so
/// `openssl pkeyutl -verify -rawin` can check it with the intermediate's public key
/// (`openssl x509 -pubkey -noout -in <signer_certificate_pem>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedTreeHead {
    /// Which log: `nexus-tlog/<anchor node id>`.
    pub log_id: String,
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 Merkle tree hash of those entries, hex.
    pub root: String,
    /// When the head was signed, Unix milliseconds.
    pub timestamp_ms: u64,
    /// ed25519 signature over `signing_input`, hex.
    pub signature: String,
    /// The bytes signed, hex.
    pub signing_input: String,
    /// Always `ed25519`.
    pub signature_algorithm: String,
    /// The signer's raw ed25519 public key, hex: the anchor intermediate CA's key.
    pub public_key: String,
    /// SHA-256 of the anchor intermediate certificate (DER), hex; also the `issuer` of the
    /// entries this anchor logs.
    pub signer_fingerprint: String,
    /// The anchor intermediate certificate, PEM (it chains to the fleet root).
    pub signer_certificate_pem: String,
}

/// One entry of an anchor's transparency log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransparencyEntry {
    /// 0-based leaf index.
    pub index: u64,
    /// RFC 6962 leaf hash (SHA-256 of 0x00 and the leaf), hex.
    pub leaf_hash: String,
    /// `issued` or `revoked`.
    pub kind: String,
    /// Certificate serial, lowercase hex.
    pub serial: String,
    /// The node the certificate names.
    pub node_id: String,
    /// SHA-256 of the issuing anchor intermediate's certificate, hex.
    pub issuer: String,
    /// When the anchor logged it, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The certificate, DER, standard base64 (`issued` entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_der: Option<String>,
    /// The leaf bytes the hash is over (the canonical encoding), standard base64.
    pub leaf: String,
}

/// `GET /v1/transparency/entries`: a slice of the log, or the entries a lookup found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransparencyEntries {
    /// The log's size when it was read.
    pub tree_size: u64,
    /// The entries, by index.
    pub entries: Vec<TransparencyEntry>,
    /// Pass as `start` (same other parameters) for the rest; absent when there is no more.
    #[serde(default)]
    pub next_start: Option<u64>,
}

/// Which entries `GET /v1/transparency/entries` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransparencyLookup {
    /// Every entry in the range.
    All,
    /// One certificate serial's entries (lowercase hex).
    Serial(String),
    /// One node's entries (node id).
    NodeId(String),
    /// One issuer's entries (intermediate fingerprint, lowercase hex).
    Issuer(String),
}

/// What `GET /v1/transparency/proof/inclusion` proves the inclusion of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InclusionTarget {
    /// The entry of this serial (lowercase hex) and kind (`issued` or `revoked`).
    Serial {
        /// Serial.
        serial: String,
        /// `issued` or `revoked`.
        kind: String,
    },
    /// The entry with this leaf hash.
    LeafHash([u8; 32]),
}

/// `GET /v1/transparency/proof/inclusion`: RFC 6962 audit path of one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InclusionProof {
    /// The entry's index.
    pub leaf_index: u64,
    /// Its leaf hash, hex.
    pub leaf_hash: String,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// Root of that tree, hex.
    pub root: String,
    /// `PATH(leaf_index, D[tree_size])`, leaf level first, hex.
    pub audit_path: Vec<String>,
}

/// `GET /v1/transparency/proof/consistency`: RFC 6962 proof that a tree extends another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsistencyProof {
    /// The older size.
    pub first: u64,
    /// The newer size.
    pub second: u64,
    /// Root at `first`, hex.
    pub first_root: String,
    /// Root at `second`, hex.
    pub second_root: String,
    /// `PROOF(first, D[second])`, leaf level first, hex (empty when `first` is 0 or `second`).
    pub proof: Vec<String>,
}

/// Another anchor's transparency log as this anchor mirrors and checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransparencyMirror {
    /// The origin anchor.
    pub origin: String,
    /// `nexus-tlog/<origin>`.
    pub log_id: String,
    /// Entries mirrored.
    pub size: u64,
    /// Root of the newest signed head the mirrored entries reproduce (hex).
    pub root: Option<String>,
    /// False once the origin was caught rewriting or shrinking its log.
    pub consistent: bool,
    /// What was found, when inconsistent.
    pub problem: Option<String>,
    /// Last successful check (RFC 3339), if any this run.
    pub checked_at: Option<String>,
}

/// `POST /v1/keys` body: a new API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Display name, 1..=128 characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
    /// `admin`, `operator` or `viewer` (with `tenant`), or `fleet-admin` (without).
    #[schema(pattern = "^(fleet-admin|admin|operator|viewer)$")]
    pub role: String,
    /// The tenant the key is confined to; a tenant caller's own tenant when absent.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$")]
    pub tenant: Option<String>,
    /// Lifetime (`30d`, `12h`); the key never expires when absent.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// An API key as the API shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKey {
    /// Key id (16 hex characters); the caller identity is `api-key:<id>`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Tenant (`None`: fleet-wide).
    pub tenant: Option<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// Expiry, RFC 3339.
    pub expires_at: Option<String>,
    /// Revocation time, RFC 3339.
    pub revoked_at: Option<String>,
}

/// `POST /v1/keys` answer: the key and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key.
    pub key: ApiKey,
    /// The secret to send as `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// One audited API call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// `<node id>-<sequence>`: unique fleet-wide, in order per node.
    pub id: String,
    /// When, RFC 3339 (milliseconds).
    pub time: String,
    /// When, Unix milliseconds.
    pub time_ms: u64,
    /// The node that served the call.
    pub node_id: String,
    /// The caller (`unauthenticated` when its credentials were refused).
    pub identity: String,
    /// The caller's role (empty when unauthenticated).
    pub role: String,
    /// The caller's tenant (`None`: fleet-wide caller).
    pub tenant: Option<String>,
    /// Method and route template: `PUT /v1/routes/{id}`.
    pub action: String,
    /// The path called: `/v1/routes/r1`.
    pub target: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// `ok`, `denied` (401, 403, 429) or `error`.
    pub result: String,
    /// The call's trace id (also in the answer's `x-trace-id`).
    pub trace_id: String,
    /// How long the call took, microseconds.
    pub duration_us: u64,
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Only this tenant's callers.
    pub tenant: Option<String>,
    /// Only this caller identity.
    pub identity: Option<String>,
    /// Only actions containing this (`DELETE`, `/v1/routes`).
    pub action: Option<String>,
    /// Only this result.
    pub result: Option<String>,
    /// Only calls served by this node.
    pub node: Option<String>,
    /// From this time, Unix milliseconds.
    pub since_ms: Option<u64>,
    /// Before this time, Unix milliseconds.
    pub until_ms: Option<u64>,
    /// Page size.
    pub limit: usize,
    /// Continue after this entry: `(time_ms, id)` of the previous page's last.
    pub after: Option<(u64, String)>,
}
