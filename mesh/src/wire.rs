//! What a node publishes about itself in gossip: the key names and value formats. These are wire
//! types: changing them changes what other nodes (possibly of another version) read.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use nexus_ca::{NodeId, Role};
use serde::{Deserialize, Serialize};

/// Key holding the JSON-encoded [`NodeInfo`].
pub const KEY_INFO: &str = "node";
/// Key holding the node's data-plane summary (JSON), published every few seconds.
pub const KEY_DATAPLANE: &str = "dataplane";
/// Key holding the health summary: `ok`, or the first failing check.
pub const KEY_HEALTH: &str = "health";
/// Key holding the [`SelfStatus`].
pub const KEY_STATUS: &str = "status";
/// Prefix of operator actions: `op/<target node id>` = `<action>@<unix ms>`.
pub const KEY_OPERATOR_PREFIX: &str = "op/";
/// Key holding the address of the node's failure detector socket, if it runs one.
pub const KEY_PROBE: &str = "probe";
/// Prefix of a gateway's reports on its site's members, in the WAN pool:
/// `site/<node id>` = `<status>:<generation>`.
pub const KEY_SITE_PREFIX: &str = "site/";

/// The WAN pool key of a gateway's report on `node`.
pub fn site_report_key(node: &NodeId) -> String {
    format!("{KEY_SITE_PREFIX}{node}")
}

/// The `Node` fields a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Host name of the machine.
    pub hostname: String,
    /// Anchor (holds the CA, admits nodes) or plain node.
    pub role: Role,
    /// Site the node belongs to.
    pub site: String,
    /// Tenant the node belongs to.
    pub tenant: String,
    /// Operator labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// HTTP API address.
    pub api_addr: SocketAddr,
    /// QUIC address.
    pub quic_addr: SocketAddr,
    /// Version of the Nexus link software.
    pub nexlink_version: String,
    /// Version of the Nexus router (data plane).
    pub nexroute_version: String,
    /// NIC model driven by this node, if known.
    #[serde(default)]
    pub nic_model: String,
    /// Data-plane NIC backend: `dpdk`, `af_packet` or `memory`.
    #[serde(default)]
    pub nic_backend: String,
    /// Firmware version, if known.
    #[serde(default)]
    pub firmware_version: String,
    /// Capabilities the node offers.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Trust level (0 = untrusted … 255).
    pub trust_level: u8,
    /// Version of the fleet configuration the node runs.
    pub config_version: u64,
    /// When the node enrolled, unix ms.
    pub created_at_ms: u64,
    /// Serial (hex) of the MIC the node currently uses.
    #[serde(default)]
    pub mic_serial: String,
    /// When that MIC expires, unix ms (the node renews it well before).
    #[serde(default)]
    pub mic_not_after_ms: u64,
}

/// The status a node declares about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelfStatus {
    /// Serving normally.
    Active,
    /// Draining at an operator's request.
    Draining,
}

impl SelfStatus {
    /// Wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            SelfStatus::Active => "active",
            SelfStatus::Draining => "draining",
        }
    }

    /// Parses the wire form; unknown values read as active.
    pub fn parse(s: &str) -> SelfStatus {
        if s == "draining" {
            SelfStatus::Draining
        } else {
            SelfStatus::Active
        }
    }
}

/// An operator's action on a node, carried in gossip until every node has it persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorAction {
    /// Take the node out of service.
    Drain,
    /// Remove the node from the fleet for good.
    Decommission,
}

impl OperatorAction {
    /// Wire form of the action at `at_ms`.
    pub fn encode(self, at_ms: u64) -> String {
        let name = match self {
            OperatorAction::Drain => "drain",
            OperatorAction::Decommission => "decommission",
        };
        format!("{name}@{at_ms}")
    }

    /// Parses `<action>@<unix ms>`.
    pub fn decode(value: &str) -> Option<(OperatorAction, u64)> {
        let (name, at) = value.split_once('@')?;
        let action = match name {
            "drain" => OperatorAction::Drain,
            "decommission" => OperatorAction::Decommission,
            _ => return None,
        };
        Some((action, at.parse().ok()?))
    }
}

/// The key for an operator action on `target`.
pub fn operator_key(target: &NodeId) -> String {
    format!("{KEY_OPERATOR_PREFIX}{target}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_actions_roundtrip_and_junk_is_ignored() {
        for action in [OperatorAction::Drain, OperatorAction::Decommission] {
            assert_eq!(
                OperatorAction::decode(&action.encode(42)),
                Some((action, 42))
            );
        }
        assert_eq!(OperatorAction::decode("reboot@1"), None);
        assert_eq!(OperatorAction::decode("drain@soon"), None);
        assert_eq!(OperatorAction::decode("drain"), None);
    }
}
