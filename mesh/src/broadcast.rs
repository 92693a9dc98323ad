//! How a configuration change spreads, I/O-free: the broadcast tree, the gateway rule that
//! carries a change between site pools and the WAN pool, and the anti-entropy rule that picks
//! whom to run a sync session with. The node runs these over QUIC; the simulation runs the
//! same functions over its simulated network.
//!
//! ```text
//!   writer ──tree over its site──► site members ─┐
//!                                                │ the site's primary gateway
//!                                                ▼
//!                        tree over the WAN pool (anchors, gateways)
//!                                                │ every other site's primary gateway
//!                                                ▼
//!                                 tree over that site's members
//! ```
//!
//! A node that misses a push (down, partitioned, a relay failed) catches up by anti-entropy.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use nexus_ca::NodeId;

use crate::membership::{Member, NodeStatus, Pool};

/// Splits `peers` into at most `fanout` groups of nearly equal size, none empty. The first
/// member of each group gets the change directly with the rest of its group to relay to, and
/// does the same: every member is reached once, in about log_fanout(peers) hops, and no node
/// sends more than `fanout` messages per change.
pub fn split_groups<T: Clone>(peers: Vec<T>, fanout: usize) -> Vec<Vec<T>> {
    let groups = fanout.max(1).min(peers.len());
    let mut out: Vec<Vec<T>> = vec![Vec::new(); groups];
    for (i, p) in peers.into_iter().enumerate() {
        out[i % groups].push(p);
    }
    out
}

/// How a change reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Written here.
    Origin,
    /// Pushed down a tree over this node's site pool.
    Site,
    /// Pushed down a tree over the WAN pool.
    Wan,
}

/// The new trees a node starts for a change it has just taken (beyond relaying its share of
/// the tree it came down). Only new changes start trees; a duplicate still relays its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NewTrees {
    /// Start a tree over this node's site pool.
    pub site: bool,
    /// Start a tree over the WAN pool.
    pub wan: bool,
}

/// The gateway rule. The writer starts a tree over its site; a gateway writer also one over
/// the WAN pool. The primary gateway of a site (see [`primary_gateway`]) carries a change that
/// came from its site into the WAN pool, and one that came from the WAN pool into its site.
/// Only the primary does, so a site with two gateways does not receive every change twice.
pub fn new_trees(arrival: Arrival, gateway: bool, primary: bool) -> NewTrees {
    match arrival {
        Arrival::Origin => NewTrees {
            site: true,
            wan: gateway,
        },
        Arrival::Site => NewTrees {
            site: false,
            wan: gateway && primary,
        },
        Arrival::Wan => NewTrees {
            site: gateway && primary,
            wan: false,
        },
    }
}

/// Whether `status` may be sent to: offline and decommissioned members are skipped (they
/// catch up by anti-entropy when they return).
pub fn reachable(status: NodeStatus) -> bool {
    matches!(
        status,
        NodeStatus::Online | NodeStatus::Degraded | NodeStatus::Draining
    )
}

/// The primary gateway of this node's site, as this node sees it: the lowest node id among the
/// reachable members in both the site and the WAN pool (this node included when `self_gateway`).
/// Every gateway of a site computes the same answer from the same view; while views differ,
/// two gateways may both act, which costs duplicate messages, never a lost change.
pub fn primary_gateway<'a>(
    self_id: NodeId,
    self_gateway: bool,
    members: impl IntoIterator<Item = &'a Member>,
) -> Option<NodeId> {
    members
        .into_iter()
        .filter(|m| {
            m.node_id != self_id
                && m.in_pool(Pool::Site)
                && m.in_pool(Pool::Wan)
                && reachable(m.status)
        })
        .map(|m| m.node_id)
        .chain(self_gateway.then_some(self_id))
        .min()
}

/// How long a peer must advertise another digest before a session is started with it: lets
/// pushes land first, so a change does not set off a session between every pair of nodes
/// while it spreads.
pub const SYNC_SETTLE: Duration = Duration::from_millis(1500);
/// How long to leave a peer alone after a session with it for a document.
pub const RESYNC_BACKOFF: Duration = Duration::from_secs(2);

/// One document as a node publishes it in gossip: `cfg/<doc>` = `<version>:<heads digest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// Who publishes it.
    pub node: NodeId,
    /// Document id.
    pub doc: String,
    /// Number of changes.
    pub version: u64,
    /// Digest of the heads.
    pub digest: String,
}

/// The anti-entropy rule, I/O-free: remembers since when each peer has advertised a digest
/// other than ours and when we last synced with it. Time is a monotonic reading passed in.
#[derive(Debug, Default)]
pub struct AntiEntropy {
    diverged: HashMap<(NodeId, String), (String, Duration)>,
    synced: HashMap<(NodeId, String), Duration>,
}

impl AntiEntropy {
    /// A rule with no history.
    pub fn new() -> AntiEntropy {
        AntiEntropy::default()
    }

    /// The peers worth a session now, by document: those that have advertised, for at least
    /// [`SYNC_SETTLE`], a digest other than ours with at least as many changes as ours (so
    /// they may hold changes we lack; a peer behind us starts the session itself), and that
    /// we have not synced that document with in the last [`RESYNC_BACKOFF`]. `ours` maps a
    /// document to our (version, digest); documents we do not hold are ignored.
    pub fn candidates(
        &mut self,
        self_id: NodeId,
        now: Duration,
        ours: &HashMap<String, (u64, String)>,
        advertised: impl IntoIterator<Item = Advertised>,
    ) -> BTreeMap<String, Vec<NodeId>> {
        let mut by_doc: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for ad in advertised {
            let Some((our_version, our_digest)) = ours.get(&ad.doc) else {
                continue;
            };
            // A peer behind us never becomes a candidate with this digest (our version only
            // grows): it is skipped before any bookkeeping, which matters when gossip still
            // carries a whole pool's digests from before a change.
            if ad.node == self_id || ad.digest == *our_digest || ad.version < *our_version {
                continue;
            }
            let key = (ad.node, ad.doc.clone());
            seen.insert(key.clone());
            let since = match self.diverged.get(&key) {
                Some((digest, since)) if *digest == ad.digest => *since,
                _ => {
                    self.diverged.insert(key, (ad.digest, now));
                    continue;
                }
            };
            if now.saturating_sub(since) < SYNC_SETTLE {
                continue;
            }
            if self
                .synced
                .get(&key)
                .is_some_and(|at| now.saturating_sub(*at) < RESYNC_BACKOFF)
            {
                continue;
            }
            by_doc.entry(ad.doc).or_default().push(ad.node);
        }
        self.diverged.retain(|k, _| seen.contains(k));
        self.synced
            .retain(|_, at| now.saturating_sub(*at) < RESYNC_BACKOFF);
        by_doc
    }

    /// Records a session with `node` for `doc` started at `now`.
    pub fn synced(&mut self, node: NodeId, doc: &str, now: Duration) {
        self.synced.insert((node, doc.to_string()), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_every_peer_once() {
        for n in 0..40 {
            for fanout in 1..8 {
                let groups = split_groups((0..n).collect(), fanout);
                assert!(groups.len() <= fanout);
                assert!(groups.iter().all(|g| !g.is_empty()));
                let mut all: Vec<i32> = groups.into_iter().flatten().collect();
                all.sort();
                assert_eq!(all, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn tree_depth_is_logarithmic() {
        // Hops until every one of the peers is reached.
        fn depth(peers: usize, fanout: usize) -> usize {
            if peers == 0 {
                return 0;
            }
            split_groups((0..peers).collect::<Vec<_>>(), fanout)
                .iter()
                .map(|g| 1 + depth(g.len() - 1, fanout))
                .max()
                .unwrap_or(0)
        }
        assert_eq!(depth(49, 6), 3);
        assert_eq!(depth(999, 6), 4);
    }

    #[test]
    fn only_the_primary_gateway_crosses_between_pools() {
        assert_eq!(
            new_trees(Arrival::Origin, false, false),
            NewTrees {
                site: true,
                wan: false
            }
        );
        assert_eq!(
            new_trees(Arrival::Origin, true, false),
            NewTrees {
                site: true,
                wan: true
            }
        );
        assert!(new_trees(Arrival::Site, true, true).wan);
        assert!(!new_trees(Arrival::Site, true, false).wan);
        assert!(!new_trees(Arrival::Site, false, true).wan);
        assert!(new_trees(Arrival::Wan, true, true).site);
        assert!(!new_trees(Arrival::Wan, true, false).site);
        assert!(!new_trees(Arrival::Wan, true, true).wan);
    }

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn ad(node: u8, version: u64, digest: &str) -> Advertised {
        Advertised {
            node: id(node),
            doc: "fleet".into(),
            version,
            digest: digest.into(),
        }
    }

    #[test]
    fn anti_entropy_waits_for_the_digest_to_settle_and_backs_off() {
        let mut rule = AntiEntropy::new();
        let ours: HashMap<String, (u64, String)> = [("fleet".to_string(), (5, "aa".to_string()))]
            .into_iter()
            .collect();
        let ms = Duration::from_millis;
        // First sight of a different digest: wait.
        assert!(
            rule.candidates(id(0), ms(0), &ours, [ad(1, 6, "bb")])
                .is_empty()
        );
        assert!(
            rule.candidates(id(0), ms(1000), &ours, [ad(1, 6, "bb")])
                .is_empty()
        );
        // Settled.
        let c = rule.candidates(id(0), ms(1600), &ours, [ad(1, 6, "bb")]);
        assert_eq!(c["fleet"], vec![id(1)]);
        rule.synced(id(1), "fleet", ms(1600));
        assert!(
            rule.candidates(id(0), ms(2000), &ours, [ad(1, 6, "bb")])
                .is_empty()
        );
        assert_eq!(
            rule.candidates(id(0), ms(3700), &ours, [ad(1, 6, "bb")])["fleet"],
            vec![id(1)]
        );
        // A peer behind us, the same digest, ourselves, a document we do not hold: never.
        let mut rule = AntiEntropy::new();
        let many = [
            ad(2, 4, "cc"),
            ad(3, 9, "aa"),
            ad(0, 9, "dd"),
            Advertised {
                doc: "tenant/x".into(),
                ..ad(4, 9, "ee")
            },
        ];
        rule.candidates(id(0), ms(0), &ours, many.clone());
        assert!(rule.candidates(id(0), ms(5000), &ours, many).is_empty());
        // A digest that moves restarts the wait.
        let mut rule = AntiEntropy::new();
        rule.candidates(id(0), ms(0), &ours, [ad(1, 6, "bb")]);
        assert!(
            rule.candidates(id(0), ms(1600), &ours, [ad(1, 7, "b2")])
                .is_empty()
        );
    }
}
