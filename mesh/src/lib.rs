//! Membership for Nexus Cloud: who is in the fleet and whether they are alive.
//!
//! Parts:
//! - [`auth`](GossipAuth): every gossip datagram is signed with the sender's MIC key and carries
//!   (or refers to) its certificate; datagrams from outside the fleet are dropped and counted.
//! - the transport seam ([`AuthenticatedTransport`] over [`Datagrams`]): UDP in production,
//!   [`MemoryNetwork`] in tests and simulations.
//! - [`Membership`]: the I/O-free status lifecycle (online, degraded, offline, draining,
//!   decommissioned) driven by observed heartbeats and injected time.
//! - [`Mesh`]: the runtime that runs chitchat over the transport and folds its state into the
//!   membership table.
//! - [`wire`]: the keys and values a node publishes about itself.
//! - pools: every node gossips in its site's pool; anchors and site gateways also in the WAN
//!   pool, where each gateway reports its site's members (`site/<node>`), so anchors and
//!   gateways see the whole fleet while no pool grows past one site.
//! - [`detector`]: fast failure detection by direct heartbeats to a few monitors, confirmed by
//!   probes, with verdicts sent to the whole pool, so gossip itself can run slowly.
//! - [`broadcast`](split_groups): the I/O-free rules by which a change spreads (trees, the
//!   gateway rule) and anti-entropy picks its peers ([`AntiEntropy`]).
//!
//! The library never binds sockets or reads config: the binary hands it a bound socket and a
//! [`MeshConfig`].

mod auth;
mod broadcast;
mod codec;
pub mod detector;
mod membership;
mod runtime;
mod transport;
pub mod wire;

pub use auth::{DropReason, GossipAuth, GossipAuthConfig, MAX_DATAGRAM, Opened};
pub use broadcast::{
    Advertised, AntiEntropy, Arrival, NewTrees, RESYNC_BACKOFF, SYNC_SETTLE, new_trees,
    primary_gateway, reachable, split_groups,
};
pub use codec::ChitchatCodec;
pub use detector::DetectorConfig;
pub use membership::{
    FORGET_OFFLINE_AFTER, ForgetReason, Forgotten, MAX_TOMBSTONES, Member, Membership,
    MembershipConfig, NodeStatus, Now, Observation, Pool, Report, Transition,
};
pub use runtime::{
    Clock, DEAD_INCARNATION_GRACE, DEFAULT_GOSSIP_INTERVAL, Mesh, MeshConfig, MeshError,
    MeshObserver, Observer, PoolSocket, RumorConfig,
};
pub use transport::{
    AuthenticatedTransport, Datagrams, MemoryDatagrams, MemoryNetwork, UdpDatagrams,
};
pub use wire::{NodeInfo, OperatorAction, SelfStatus};

use std::time::Duration;

/// Parses a duration written as a number and a unit: `250ms`, `2s`, `5m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("duration {text:?} has no unit: write e.g. 250ms, 2s, 5m, 1h, 7d")
    })?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} must start with a whole number"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "duration {text:?} has unknown unit {unit:?}: use ms, s, m, h or d"
            ));
        }
    };
    value
        .checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_junk() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
    }
}
