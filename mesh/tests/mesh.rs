//! Conformance suite of the mesh runtime: written once, generic over how gossip sockets are made,
//! run over real UDP on loopback and over the in-memory network.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::{Fleet, Identity, Memory, Net, Udp, eventually, sees, unix_ms};
use nexus_ca::NodeId;
use nexus_mesh::{Mesh, NodeStatus, OperatorAction, SelfStatus};

const NODES: usize = 4;

/// Four nodes of one fleet, all seeded with node 0's gossip address.
struct Cluster<N: Net> {
    net: N,
    fleet: Fleet,
    ids: Vec<Identity>,
    generations: Vec<u64>,
    meshes: Vec<Option<Mesh>>,
    seed: SocketAddr,
}

impl<N: Net> Cluster<N> {
    async fn start(net: N) -> Cluster<N> {
        let fleet = Fleet::new("acme.test");
        let ids: Vec<Identity> = (0..NODES).map(|_| fleet.enroll()).collect();
        let generation = unix_ms();
        let first = fleet
            .start(&ids[0], generation, net.socket(), Vec::new())
            .await;
        let seed = first.gossip_addr();
        let mut meshes = vec![Some(first)];
        for id in &ids[1..] {
            meshes.push(Some(
                fleet.start(id, generation, net.socket(), vec![seed]).await,
            ));
        }
        let cluster = Cluster {
            net,
            fleet,
            ids,
            generations: vec![generation; NODES],
            meshes,
            seed,
        };
        cluster
            .everyone_sees("all nodes are online", &cluster.expect(&[]))
            .await;
        cluster
    }

    fn node(&self, i: usize) -> NodeId {
        self.ids[i].node_id()
    }

    fn mesh(&self, i: usize) -> &Mesh {
        self.meshes[i].as_ref().expect("node is running")
    }

    /// Every node with the given statuses, Online unless listed.
    fn expect(&self, statuses: &[(usize, NodeStatus)]) -> BTreeMap<NodeId, NodeStatus> {
        (0..NODES)
            .map(|i| {
                let status = statuses
                    .iter()
                    .find(|(n, _)| *n == i)
                    .map_or(NodeStatus::Online, |(_, s)| *s);
                (self.node(i), status)
            })
            .collect()
    }

    /// Waits until each of `observers` sees exactly `expected`.
    async fn observers_see(
        &self,
        what: &str,
        observers: &[usize],
        expected: &BTreeMap<NodeId, NodeStatus>,
    ) {
        eventually(what, || {
            for &i in observers {
                sees(self.mesh(i), expected).map_err(|err| format!("node {i}: {err}"))?;
            }
            Ok(())
        })
        .await;
    }

    /// Waits until every running node sees exactly `expected`.
    async fn everyone_sees(&self, what: &str, expected: &BTreeMap<NodeId, NodeStatus>) {
        let running: Vec<usize> = (0..NODES).filter(|i| self.meshes[*i].is_some()).collect();
        self.observers_see(what, &running, expected).await;
    }

    async fn shutdown(&mut self, i: usize) {
        let mesh = self.meshes[i].take().expect("node is running");
        mesh.shutdown();
        drop(mesh);
    }

    async fn stop(mut self) {
        for i in 0..NODES {
            if self.meshes[i].is_some() {
                self.shutdown(i).await;
            }
        }
    }
}

fn others(i: usize) -> Vec<usize> {
    (0..NODES).filter(|n| *n != i).collect()
}

async fn members_converge_and_a_shut_down_node_goes_offline<N: Net>(net: N) {
    let mut cluster = Cluster::start(net).await;
    // Heartbeats travel in digests, ahead of the key-values: poll for the published state.
    eventually("every node has everyone's published state", || {
        for i in 0..NODES {
            let members = cluster.mesh(i).members();
            assert_eq!(members.len(), NODES);
            for m in &members {
                let j = cluster
                    .ids
                    .iter()
                    .position(|id| id.node_id() == m.node_id)
                    .unwrap();
                assert_eq!(m.generation, cluster.generations[j]);
                assert_eq!(m.gossip_addr, Some(cluster.mesh(j).gossip_addr()));
                if m.info.as_ref() != Some(&common::info()) || m.health != "ok" {
                    return Err(format!("node {i} has {j} as {m:?}"));
                }
            }
        }
        Ok(())
    })
    .await;

    cluster.shutdown(2).await;
    cluster
        .everyone_sees(
            "the shut down node is offline",
            &cluster.expect(&[(2, NodeStatus::Offline)]),
        )
        .await;
    // Shutting down the seed as well: the remaining two keep gossiping with each other.
    cluster.shutdown(0).await;
    cluster
        .everyone_sees(
            "the seed is offline too",
            &cluster.expect(&[(0, NodeStatus::Offline), (2, NodeStatus::Offline)]),
        )
        .await;
    cluster.stop().await;
}

async fn a_restart_with_a_new_generation_is_the_same_node<N: Net>(net: N) {
    let mut cluster = Cluster::start(net).await;
    let restarted = 3;
    cluster.shutdown(restarted).await;
    cluster
        .everyone_sees(
            "the stopped node is offline",
            &cluster.expect(&[(restarted, NodeStatus::Offline)]),
        )
        .await;

    let generation = cluster.generations[restarted] + 1_000;
    let socket = cluster.net.socket();
    let new_addr = socket.local_addr();
    let mesh = cluster
        .fleet
        .start(
            &cluster.ids[restarted],
            generation,
            socket,
            vec![cluster.seed],
        )
        .await;
    assert_eq!(mesh.gossip_addr(), new_addr);
    cluster.meshes[restarted] = Some(mesh);
    cluster.generations[restarted] = generation;
    cluster
        .everyone_sees("the restarted node is online again", &cluster.expect(&[]))
        .await;
    let node = cluster.node(restarted);
    for i in 0..NODES {
        let members = cluster.mesh(i).members();
        assert_eq!(members.len(), NODES, "one entry per node id on node {i}");
        let m = cluster.mesh(i).member(&node).unwrap();
        assert_eq!(
            m.generation, generation,
            "node {i} tracks the new incarnation"
        );
        assert_eq!(
            m.gossip_addr,
            Some(new_addr),
            "node {i} has the new address"
        );
    }
    cluster.stop().await;
}

async fn drain_and_decommission_reach_every_node<N: Net>(net: N) {
    let cluster = Cluster::start(net).await;
    let (drained, gone) = (1, 3);

    cluster
        .mesh(0)
        .operator_action(cluster.node(drained), OperatorAction::Drain)
        .await;
    cluster
        .everyone_sees(
            "the drained node is draining everywhere",
            &cluster.expect(&[(drained, NodeStatus::Draining)]),
        )
        .await;
    // The drained node declared it itself.
    eventually("the drained node publishes its draining status", || {
        for i in 0..NODES {
            let m = cluster.mesh(i).member(&cluster.node(drained)).unwrap();
            if m.self_status != SelfStatus::Draining {
                return Err(format!("node {i} reads {:?}", m.self_status));
            }
        }
        Ok(())
    })
    .await;

    cluster
        .mesh(0)
        .operator_action(cluster.node(gone), OperatorAction::Decommission)
        .await;
    let expected = cluster.expect(&[
        (drained, NodeStatus::Draining),
        (gone, NodeStatus::Decommissioned),
    ]);
    cluster
        .observers_see(
            "the decommissioned node is decommissioned",
            &others(gone),
            &expected,
        )
        .await;

    // Its gossip is dropped from now on. Let every node's deny take effect (a few rounds), then
    // note how far its heartbeat got on each node.
    let gossip = common::timing().gossip_interval;
    tokio::time::sleep(gossip * 3).await;
    let heartbeats: Vec<_> = others(gone)
        .into_iter()
        .map(|i| {
            (
                i,
                cluster
                    .mesh(i)
                    .member(&cluster.node(gone))
                    .unwrap()
                    .last_heartbeat_ms,
            )
        })
        .collect();
    cluster.mesh(gone).set_health("still-here").await;
    // Control: a live node's change spreads meanwhile, so gossip is flowing.
    cluster.mesh(drained).set_health("control").await;
    eventually("a live node's health change reaches everyone", || {
        for i in others(gone) {
            let health = cluster
                .mesh(i)
                .member(&cluster.node(drained))
                .unwrap()
                .health;
            if health != "control" {
                return Err(format!("node {i} has {health:?}"));
            }
        }
        Ok(())
    })
    .await;
    // Give the decommissioned node's change as long as a node takes to be declared offline.
    tokio::time::sleep(common::timing().offline_after).await;
    for (i, heartbeat) in heartbeats {
        let m = cluster.mesh(i).member(&cluster.node(gone)).unwrap();
        assert_eq!(
            m.health, "ok",
            "node {i} received gossip from a decommissioned node"
        );
        assert_eq!(
            m.last_heartbeat_ms, heartbeat,
            "node {i} saw its heartbeat advance"
        );
    }
    // The others still agree.
    let expected = cluster.expect(&[
        (drained, NodeStatus::Draining),
        (gone, NodeStatus::Decommissioned),
    ]);
    cluster
        .observers_see(
            "the others keep it decommissioned",
            &others(gone),
            &expected,
        )
        .await;
    cluster.stop().await;
}

/// MemoryNetwork only: a node cut off from everyone goes offline, and comes back when healed.
async fn a_partitioned_node_goes_offline_and_returns_when_healed(net: Memory) {
    let network = net.network.clone();
    let cluster = Cluster::start(net).await;
    let cut = 2;
    for i in others(cut) {
        network.cut(
            cluster.mesh(cut).gossip_addr(),
            cluster.mesh(i).gossip_addr(),
        );
    }
    cluster
        .observers_see(
            "the others see the cut node offline",
            &others(cut),
            &cluster.expect(&[(cut, NodeStatus::Offline)]),
        )
        .await;
    let alone: Vec<(usize, NodeStatus)> = others(cut)
        .into_iter()
        .map(|i| (i, NodeStatus::Offline))
        .collect();
    cluster
        .observers_see(
            "the cut node sees everyone else offline",
            &[cut],
            &cluster.expect(&alone),
        )
        .await;
    // Stay cut until chitchat has forgotten the others' state on the cut side (it must then
    // re-admit them: their heartbeats moved on).
    let forgotten = std::time::Instant::now();
    while cluster.mesh(cut).incarnations().await > 1 {
        assert!(
            forgotten.elapsed() < std::time::Duration::from_secs(15),
            "chitchat never garbage-collected the unreachable incarnations"
        );
        tokio::time::sleep(common::DEAD_GRACE / 4).await;
    }

    network.heal();
    cluster
        .everyone_sees("everyone is online after healing", &cluster.expect(&[]))
        .await;
    cluster.stop().await;
}

macro_rules! on_both_networks {
    ($($scenario:ident),* $(,)?) => {
        mod udp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let _serial = super::common::one_cluster_at_a_time().await;
                    super::$scenario(super::Udp).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let _serial = super::common::one_cluster_at_a_time().await;
                    super::$scenario(super::Memory::default()).await;
                }
            )*
        }
    };
}

on_both_networks!(
    members_converge_and_a_shut_down_node_goes_offline,
    a_restart_with_a_new_generation_is_the_same_node,
    drain_and_decommission_reach_every_node,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_partition_then_heal() {
    let _serial = common::one_cluster_at_a_time().await;
    a_partitioned_node_goes_offline_and_returns_when_healed(Memory::default()).await;
}

/// An operator action outlives the node it was sent to: after that node is gone and forgotten, a
/// node that joins later still applies it (every node carries every action in its own state). The
/// newcomer is seeded at the decommissioned node itself, which still runs: without the action it
/// would take it for a live member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_operator_actions_outlive_their_issuer() {
    let _serial = common::one_cluster_at_a_time().await;
    let net = Memory::default();
    let network = net.network.clone();
    let mut cluster = Cluster::start(net).await;
    let (issuer, gone) = (0, 3);
    // Cut off first, so the decommissioned node never learns of (nor re-publishes) its fate: the
    // newcomer can learn it only from the survivors' state.
    for i in others(gone) {
        network.cut(
            cluster.mesh(gone).gossip_addr(),
            cluster.mesh(i).gossip_addr(),
        );
    }
    cluster
        .mesh(issuer)
        .operator_action(cluster.node(gone), OperatorAction::Decommission)
        .await;
    cluster
        .observers_see(
            "the decommission reached everyone",
            &others(gone),
            &cluster.expect(&[(gone, NodeStatus::Decommissioned)]),
        )
        .await;
    cluster.shutdown(issuer).await;
    // Wait until chitchat has forgotten the issuer (and the refused node) on the survivors.
    let forgotten = std::time::Instant::now();
    for i in [1, 2] {
        while cluster.mesh(i).incarnations().await > 2 {
            assert!(
                forgotten.elapsed() < std::time::Duration::from_secs(15),
                "chitchat never forgot the issuer"
            );
            tokio::time::sleep(common::DEAD_GRACE / 4).await;
        }
    }
    let newcomer_id = cluster.fleet.enroll();
    let seeds = vec![cluster.mesh(2).gossip_addr()];
    let newcomer = cluster
        .fleet
        .start(&newcomer_id, unix_ms(), cluster.net.socket(), seeds)
        .await;
    let gone_addr = cluster.mesh(gone).gossip_addr();
    eventually("the newcomer applies the decommission", || {
        // The newcomer also talks to the decommissioned node itself, which presents itself as a
        // live member: only the action carried by the survivors' state tells the truth.
        newcomer.gossip_with(gone_addr);
        match newcomer.member(&cluster.node(gone)) {
            Some(m) if m.status == NodeStatus::Decommissioned => Ok(()),
            other => Err(format!("it sees {:?}", other.map(|m| m.status))),
        }
    })
    .await;
    newcomer.shutdown();
    cluster.stop().await;
}

/// A decommissioned node learns it from the fleet's gossip (the fleet still sends to it; it only
/// refuses what it sends) and is told to stop through `Mesh::evicted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_decommissioned_node_is_told_it_was_evicted() {
    let _serial = common::one_cluster_at_a_time().await;
    let cluster = Cluster::start(Memory::default()).await;
    let gone = 3;
    let mut evicted = cluster.mesh(gone).evicted();
    assert!(!*evicted.borrow());
    cluster
        .mesh(0)
        .operator_action(cluster.node(gone), OperatorAction::Decommission)
        .await;
    tokio::time::timeout(std::time::Duration::from_secs(15), evicted.wait_for(|e| *e))
        .await
        .expect("the decommissioned node is told within 15 s")
        .expect("mesh still running");
    for i in others(gone) {
        assert!(
            !*cluster.mesh(i).evicted().borrow(),
            "only the target is evicted"
        );
    }
    cluster.stop().await;
}
