//! Forgetting dead nodes, over the in-memory network: a node offline for `forget_offline_after`
//! is forgotten everywhere; the gossip state of its incarnation that peers still carry does not
//! bring it back, not even to a node that saw fewer of its heartbeats than they did; live nodes
//! forgotten during a partition come back when it heals; the dead incarnation's state leaves
//! every node's gossip state after the dead-incarnation grace (digests shrink back); and a new
//! incarnation of the dead node is a member again.
//!
//! This binary installs a process-wide metrics recorder, so it holds only this test.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Fleet, Identity, Memory, Net, counters, eventually, sees, timing, unix_ms};
use nexus_ca::NodeId;
use nexus_mesh::{MeshConfig, NodeStatus};

const NODES: usize = 4;

fn forgotten_offline() -> u64 {
    counters().get("nexus_members_forgotten_total{reason=offline}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_forgotten_everywhere_and_its_stale_state_does_not_come_back() {
    let _serial = common::one_cluster_at_a_time().await;
    assert_eq!(forgotten_offline(), 0);
    let timing = timing();
    let forget_after = timing.offline_after * 3;
    // chitchat keeps the dead incarnation's state (and gossips it for half of this) well past
    // the forgetting, so the tables keep reading it.
    let grace = forget_after * 6;
    let tweak = move |c: &mut MeshConfig| {
        c.membership.forget_offline_after = forget_after;
        c.dead_incarnation_grace = grace;
    };
    let net = Memory::default();
    let network = net.network.clone();
    let fleet = Fleet::new("acme.test");
    let ids: Vec<Identity> = (0..NODES).map(|_| fleet.enroll()).collect();
    let node = |i: usize| ids[i].node_id();
    let generation = unix_ms();
    let first = fleet
        .start_with(&ids[0], generation, net.socket(), Vec::new(), tweak)
        .await;
    let seed = first.gossip_addr();
    let mut meshes = vec![Some(first)];
    for id in &ids[1..] {
        meshes.push(Some(
            fleet
                .start_with(id, generation, net.socket(), vec![seed], tweak)
                .await,
        ));
    }
    let expect = |listed: &[(usize, NodeStatus)]| -> BTreeMap<NodeId, NodeStatus> {
        listed.iter().map(|(i, s)| (node(*i), *s)).collect()
    };
    let online = |listed: &[usize]| -> Vec<(usize, NodeStatus)> {
        listed.iter().map(|i| (*i, NodeStatus::Online)).collect()
    };
    {
        let meshes = &meshes;
        eventually("all nodes are online", || {
            for mesh in meshes.iter().flatten() {
                sees(mesh, &expect(&online(&[0, 1, 2, 3])))?;
            }
            Ok(())
        })
        .await;
    }

    // Node 0 is cut off, then node 3 dies: nodes 1 and 2 saw more of its heartbeats than node 0.
    let (cut, dead) = (0, 3);
    let addr: Vec<_> = meshes
        .iter()
        .map(|m| m.as_ref().unwrap().gossip_addr())
        .collect();
    for i in 1..NODES {
        network.cut(addr[cut], addr[i]);
    }
    tokio::time::sleep(timing.gossip_interval * 4).await;
    meshes[dead].take().unwrap().shutdown();
    let killed = Instant::now();
    let mesh = |i: usize| meshes[i].as_ref().expect("node is running");
    let cut_view = expect(&[
        (0, NodeStatus::Online),
        (1, NodeStatus::Offline),
        (2, NodeStatus::Offline),
        (3, NodeStatus::Offline),
    ]);
    let peer_view = expect(&[
        (0, NodeStatus::Offline),
        (1, NodeStatus::Online),
        (2, NodeStatus::Online),
        (3, NodeStatus::Offline),
    ]);
    let views = |cut_view: &BTreeMap<NodeId, NodeStatus>,
                 peer_view: &BTreeMap<NodeId, NodeStatus>|
     -> Result<(), String> {
        sees(mesh(cut), cut_view).map_err(|e| format!("node {cut}: {e}"))?;
        for i in [1, 2] {
            sees(mesh(i), peer_view).map_err(|e| format!("node {i}: {e}"))?;
        }
        Ok(())
    };
    eventually("the cut node and the dead node are offline", || {
        views(&cut_view, &peer_view)
    })
    .await;
    // Not forgotten before its time.
    tokio::time::sleep(forget_after / 2).await;
    views(&cut_view, &peer_view).expect("offline members are still listed");

    eventually("every offline member is forgotten", || {
        views(&expect(&online(&[0])), &expect(&online(&[1, 2])))
    })
    .await;
    // chitchat still holds every incarnation: the tables forgot them on their own.
    for i in 0..3 {
        assert_eq!(
            mesh(i).incarnations().await,
            NODES,
            "node {i} still carries the dead incarnations' state"
        );
    }
    assert_eq!(forgotten_offline(), 3 + 2 + 2);

    // Heal while nodes 1 and 2 still gossip node 3's state (with heartbeats node 0 never saw):
    // nodes 0, 1 and 2 find each other again, node 3 stays forgotten.
    network.heal();
    assert!(
        killed.elapsed() < grace / 2,
        "healed while node 3's state is still in the digests ({:?} after the kill)",
        killed.elapsed()
    );
    let dead_listed = |i: usize| mesh(i).member(&node(dead)).map(|m| m.status);
    {
        let expected = expect(&online(&[0, 1, 2]));
        eventually("the live nodes are members again everywhere", || {
            for i in 0..3 {
                assert_eq!(dead_listed(i), None, "node {i} brought node 3 back");
                sees(mesh(i), &expected).map_err(|e| format!("node {i}: {e}"))?;
            }
            Ok(())
        })
        .await;
    }

    // chitchat drops the dead incarnation everywhere after the grace: digests shrink back.
    let deadline = Instant::now() + grace * 2 + Duration::from_secs(10);
    loop {
        let mut carried = Vec::new();
        for i in 0..3 {
            assert_eq!(dead_listed(i), None, "node {i} brought node 3 back");
            carried.push(mesh(i).incarnations().await);
        }
        if carried.iter().all(|n| *n == NODES - 1) {
            eprintln!(
                "{:>6} ms after the kill, no node carries its state",
                killed.elapsed().as_millis()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "incarnations still carried: {carried:?}"
        );
        tokio::time::sleep(timing.tick_interval * 4).await;
    }
    // Nothing was forgotten twice (nothing came back to be forgotten again).
    assert_eq!(forgotten_offline(), 3 + 2 + 2);

    // The node really comes back: a new incarnation is a fresh member everywhere.
    let new_generation = generation + 1_000;
    meshes[dead] = Some(
        fleet
            .start_with(&ids[dead], new_generation, net.socket(), vec![seed], tweak)
            .await,
    );
    {
        let meshes = &meshes;
        let expected = expect(&online(&[0, 1, 2, 3]));
        eventually("the new incarnation is a member everywhere", || {
            for (i, mesh) in meshes.iter().flatten().enumerate() {
                sees(mesh, &expected).map_err(|e| format!("node {i}: {e}"))?;
                let generation = mesh.member(&node(dead)).map(|m| m.generation);
                if generation != Some(new_generation) {
                    return Err(format!("node {i} has generation {generation:?}"));
                }
            }
            Ok(())
        })
        .await;
    }
    for mesh in meshes.into_iter().flatten() {
        mesh.shutdown();
    }
}
