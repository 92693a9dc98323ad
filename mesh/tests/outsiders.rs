//! Outsiders next to a fleet, over real UDP: a plain chitchat node (no Nexus authentication) and
//! mesh nodes of another fleet, all seeded with a fleet node. None of them may get in, and the
//! fleet counts their datagrams as dropped.
//!
//! This binary installs a process-wide metrics recorder, so it holds only this test.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use common::{Fleet, Net, Udp, counters, eventually, unix_ms};
use nexus_ca::NodeId;
use nexus_mesh::{Mesh, NodeStatus};

fn dropped(reason: &str) -> u64 {
    counters().get(&format!(
        "nexus_gossip_datagrams_dropped_total{{reason={reason}}}"
    ))
}

/// A plain chitchat node on a free loopback port.
async fn plain_chitchat(name: &str, cluster_id: &str, seed: SocketAddr) -> ChitchatHandle {
    // chitchat binds itself: find a free port, release it, hand it over.
    let listen_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let interval = common::timing().gossip_interval;
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(name.to_string(), unix_ms(), listen_addr),
        cluster_id: cluster_id.to_string(),
        gossip_interval: interval,
        listen_addr,
        seed_nodes: vec![seed.to_string()],
        failure_detector_config: FailureDetectorConfig {
            initial_interval: interval,
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V1,
    };
    let initial = vec![("health".to_string(), "ok".to_string())];
    spawn_chitchat(config, initial, &UdpTransport)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_never_join_and_their_datagrams_are_counted_as_dropped() {
    let counters = counters();
    let fleet = Fleet::new("acme.test");
    let ids: Vec<_> = (0..3).map(|_| fleet.enroll()).collect();
    let fleet_ids: Vec<NodeId> = ids.iter().map(|id| id.node_id()).collect();
    let generation = unix_ms();
    let first = fleet
        .start(&ids[0], generation, Udp.socket(), Vec::new())
        .await;
    let seed = first.gossip_addr();
    let mut members = vec![first];
    for id in &ids[1..] {
        members.push(fleet.start(id, generation, Udp.socket(), vec![seed]).await);
    }

    // Outsiders, all seeded with the fleet: plain chitchat with another cluster id and with the
    // fleet's own one, a mesh node of another fleet, and one of a fleet that reuses this fleet's
    // id under a different root.
    let plain_other = plain_chitchat("outsider-other", "other-cluster", seed).await;
    let plain_same = plain_chitchat("outsider-same", &fleet.id, seed).await;
    let mut strangers: Vec<Mesh> = Vec::new();
    let mut stranger_ids: Vec<NodeId> = Vec::new();
    for other in [Fleet::new("globex"), Fleet::new(&fleet.id)] {
        let id = other.enroll();
        stranger_ids.push(id.node_id());
        strangers.push(other.start(&id, generation, Udp.socket(), vec![seed]).await);
    }

    // The fleet hears them (and drops them) ...
    eventually("the fleet has dropped the outsiders' datagrams", || {
        let (plain, untrusted) = (dropped("not_nexus"), dropped("untrusted_certificate"));
        if plain >= 3 && untrusted >= 3 {
            Ok(())
        } else {
            Err(format!(
                "not_nexus {plain}, untrusted_certificate {untrusted}"
            ))
        }
    })
    .await;
    // ... while it keeps gossiping among itself.
    let fleet_view: std::collections::BTreeMap<NodeId, NodeStatus> = fleet_ids
        .iter()
        .map(|id| (*id, NodeStatus::Online))
        .collect();
    eventually("the fleet lists exactly its own members, online", || {
        for (i, mesh) in members.iter().enumerate() {
            common::sees(mesh, &fleet_view).map_err(|e| format!("node {i}: {e}"))?;
        }
        Ok(())
    })
    .await;
    // A few more rounds of the outsiders knocking.
    let before = dropped("not_nexus") + dropped("untrusted_certificate");
    tokio::time::sleep(common::timing().gossip_interval * 8).await;
    assert!(
        dropped("not_nexus") + dropped("untrusted_certificate") > before,
        "the outsiders kept gossiping at the fleet"
    );

    for (i, mesh) in members.iter().enumerate() {
        let listed: Vec<NodeId> = mesh.members().iter().map(|m| m.node_id).collect();
        assert_eq!(listed.len(), fleet_ids.len(), "node {i} lists {listed:?}");
        for stranger in &stranger_ids {
            assert!(!listed.contains(stranger), "node {i} admitted a stranger");
        }
    }
    for plain in [&plain_other, &plain_same] {
        let names: Vec<String> = plain
            .with_chitchat(|c| {
                c.node_states()
                    .keys()
                    .map(|id| id.node_id.to_string())
                    .collect()
            })
            .await;
        for id in &fleet_ids {
            assert!(
                !names.contains(&id.to_string()),
                "plain chitchat learned fleet node {id}: {names:?}"
            );
        }
    }
    for (stranger, own) in strangers.iter().zip(&stranger_ids) {
        let listed: Vec<NodeId> = stranger.members().iter().map(|m| m.node_id).collect();
        assert!(
            listed.iter().all(|id| id == own),
            "a stranger learned the fleet: {listed:?}"
        );
    }
    // Nothing from a fleet member was dropped for a trust reason: the drops are the outsiders'.
    assert_eq!(dropped("identity_mismatch"), 0);
    assert_eq!(dropped("bad_signature"), 0);
    assert!(counters.get("nexus_gossip_datagrams_received_total{}") > 0);

    for mesh in members.iter().chain(&strangers) {
        mesh.shutdown();
    }
    plain_other.shutdown().await.unwrap();
    plain_same.shutdown().await.unwrap();
}
