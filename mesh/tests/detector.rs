//! The failure detector over authenticated datagrams: with gossip slowed to where its own
//! silence rules would take tens of seconds, a killed node is still offline everywhere within
//! the detector's bound, and no live node is ever declared down.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Fleet, info, unix_ms};
use nexus_mesh::{
    Clock, DetectorConfig, MembershipConfig, MemoryNetwork, Mesh, MeshConfig, NodeStatus,
};

const NODES: usize = 5;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_declared_down_by_its_monitors_long_before_gossip_would() {
    let _serial = common::one_cluster_at_a_time().await;
    let net = MemoryNetwork::default();
    let fleet = Fleet::new("acme.test");
    let ids: Vec<_> = (0..NODES).map(|_| fleet.enroll()).collect();
    // Gossip every second; heartbeat silence alone would take 20 s to suspect, 40 s to declare.
    let membership = MembershipConfig {
        suspect_after: Duration::from_secs(20),
        offline_after: Duration::from_secs(40),
        decommission_grace: Duration::from_secs(3600),
        forget_offline_after: Duration::from_secs(3600),
    };
    let detector = DetectorConfig {
        suspect_after: Duration::from_secs(2),
        ..DetectorConfig::default()
    };
    let generation = unix_ms();
    let mut meshes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let config = MeshConfig {
            fleet_id: fleet.id.clone(),
            node_id: id.node_id(),
            generation,
            gossip_interval: Duration::from_secs(1),
            seeds: vec![addr(1000)],
            membership: membership.clone(),
            tick_interval: Duration::from_millis(100),
            dead_incarnation_grace: Duration::from_secs(300),
            wan_seeds: Vec::new(),
            clock: Clock::system(),
            observer: None,
            detector: detector.clone(),
            rumor: nexus_mesh::RumorConfig::default(),
        };
        let gossip = net.bind(addr(1000 + i as u16)).unwrap();
        let probe = net.bind(addr(2000 + i as u16)).unwrap();
        meshes.push(Some(
            Mesh::start(
                config,
                Box::new(gossip),
                None,
                Some(Box::new(probe)),
                fleet.auth(id),
                &info(),
                Vec::new(),
            )
            .await
            .unwrap(),
        ));
    }
    let view = |mesh: &Mesh, node| mesh.member(&node).map(|m| m.status);
    // Everyone knows everyone, detector addresses included (gossip brings them).
    let start = Instant::now();
    loop {
        let ready = meshes.iter().flatten().all(|m| {
            ids.iter().all(|id| {
                m.member(&id.node_id()).is_some_and(|member| {
                    member.status == NodeStatus::Online && member.probe_addr.is_some()
                })
            })
        });
        if ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the fleet did not converge in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Quiet for a while: heartbeats and probes keep every live node online.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for mesh in meshes.iter().flatten() {
        for id in &ids {
            assert_eq!(view(mesh, id.node_id()), Some(NodeStatus::Online));
        }
    }

    let victim = ids[NODES - 1].node_id();
    meshes[NODES - 1].take().unwrap().shutdown();
    let killed = Instant::now();
    loop {
        let seen = meshes
            .iter()
            .flatten()
            .filter(|m| view(m, victim) == Some(NodeStatus::Offline))
            .count();
        if seen == NODES - 1 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "only {seen} of {} saw the killed node offline after 10 s (gossip alone needs 40 s)",
            NODES - 1
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let detected = killed.elapsed();
    eprintln!("killed node offline everywhere after {detected:?}");
    // The bound: a heartbeat interval, the silence, the probes, and slack for a loaded machine.
    assert!(detected < detector.worst_detection() + Duration::from_secs(3));
    for mesh in meshes.iter().flatten() {
        for id in &ids[..NODES - 1] {
            assert_eq!(
                view(mesh, id.node_id()),
                Some(NodeStatus::Online),
                "a live node was declared down"
            );
        }
    }
    for mesh in meshes.iter().flatten() {
        mesh.shutdown();
    }
}
