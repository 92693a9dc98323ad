//! API wire types: the JSON bodies of `/v1`. Separate from internal types so the API evolves
//! backward-compatibly on its own schedule.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// NIC model.
    pub nic_model: String,
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
}

/// Node addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// HTTP API.
    pub api: Option<String>,
    /// Gossip (UDP).
    pub gossip: Option<String>,
    /// QUIC.
    pub quic: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// Items of this page.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /v1/tokens` body. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Lifetime in seconds (default 3600, 1 ..= 2,592,000).
    pub ttl_seconds: Option<u64>,
    /// How many nodes may join with it (default 1, 1 ..= 10,000).
    pub uses: Option<u32>,
    /// Tenant the joining nodes belong to (default `default`).
    pub tenant: Option<String>,
    /// Site the joining nodes belong to (default: the joining node's own `--site`, else `default`).
    pub site: Option<String>,
    /// Labels given to joining nodes.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A token just created: the only time its secret form is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The join token to hand to `nexus join`.
    pub token: String,
    /// Its metadata.
    #[serde(flatten)]
    pub info: Token,
}

/// A join token's metadata (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Machine-readable code and human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, snake_case.
    pub code: String,
    /// What was wrong and what to do.
    pub message: String,
}

/// `POST /v1/mics/csr` body: ask an anchor for a MIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// PKCS#10 CSR (PEM) with an ed25519 key. Its subject CN, if set, must be the node id of
    /// that key.
    pub csr_pem: String,
    /// Tenant (default `default`).
    pub tenant: Option<String>,
    /// Site (default `default`).
    pub site: Option<String>,
    /// `node` (default) or `anchor`.
    pub role: Option<String>,
}

/// A machine identity certificate an anchor issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// `unspecified` (default), `key_compromise`, `superseded` or `cessation_of_operation`.
    pub reason: Option<String>,
}

/// The outcome of a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The certificate, now revoked.
    #[serde(flatten)]
    pub mic: Mic,
    /// Number of the CRL that lists it.
    pub crl_number: u64,
}

/// Who is calling, as the API authenticated them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// `api-key:<id>` or `node:<node id>`.
    pub identity: String,
    /// `fleet-admin` or `node`.
    pub role: String,
    /// Tenant the caller is confined to (`None`: the whole fleet).
    pub tenant: Option<String>,
}
