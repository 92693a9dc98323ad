//! Gossip from machines without a certificate of this fleet is dropped and counted.

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{
    ChitchatConfig, ChitchatId, FailureDetectorConfig, ProtocolVersion, spawn_chitchat,
};
use nexus_tests::Fleet;

#[tokio::test]
async fn outsider_gossip_is_dropped_and_counted() {
    let fleet = Fleet::init().await.unwrap();
    let mut other = Fleet::init().await.unwrap();
    let anchor_gossip: SocketAddr = fleet.anchor().gossip.parse().unwrap();

    // 1. A plain chitchat node claiming the fleet's cluster id, gossiping at the anchor.
    let outsider_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let outsider_addr = outsider_socket.local_addr().unwrap();
    drop(outsider_socket);
    let outsider = spawn_chitchat(
        ChitchatConfig {
            chitchat_id: ChitchatId::new("outsider", 1, outsider_addr),
            // The fleet's own cluster id: chitchat's cluster check would let it in; only the
            // datagram authentication stands in the way.
            cluster_id: fleet.anchor().fleet_id.clone(),
            gossip_interval: Duration::from_millis(100),
            listen_addr: outsider_addr,
            seed_nodes: vec![anchor_gossip.to_string()],
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(60),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        },
        vec![("role".to_string(), "intruder".to_string())],
        &UdpTransport,
    )
    .await
    .unwrap();

    // 2. A node of another fleet (its own root), pointed at this fleet.
    let other_dir = other.nodes[0].dir.clone();
    other.nodes[0].kill9();
    let foreign = nexus_tests::NodeProc::spawn(
        &other_dir,
        &[
            "run",
            "--data-dir",
            other_dir.to_str().unwrap(),
            "--seed",
            &anchor_gossip.to_string(),
        ],
    )
    .await
    .unwrap();

    nexus_tests::wait_until(
        Duration::from_secs(15),
        "both kinds of drop counted",
        || {
            let fleet = &fleet;
            async move {
                let api = &fleet.anchor().api;
                let plain = fleet
                    .metric(
                        api,
                        "nexus_gossip_datagrams_dropped_total",
                        "reason=\"not_nexus\"",
                    )
                    .await
                    .unwrap_or(0.0);
                let foreign = fleet
                    .metric(
                        api,
                        "nexus_gossip_datagrams_dropped_total",
                        "reason=\"untrusted_certificate\"",
                    )
                    .await
                    .unwrap_or(0.0);
                plain >= 3.0 && foreign >= 3.0
            }
        },
    )
    .await
    .unwrap();

    // Neither got in, and nothing of the fleet leaked to the plain outsider.
    let statuses = fleet.statuses(&fleet.anchor().api).await.unwrap();
    assert_eq!(statuses.len(), 1, "only the anchor itself: {statuses:?}");
    let leaked = outsider
        .with_chitchat(|c| {
            c.node_states()
                .keys()
                .filter(|id| &*id.node_id != "outsider")
                .count()
        })
        .await;
    assert_eq!(leaked, 0, "the outsider learned nothing");
    // The foreign node's HTTPS certificate chains to another fleet's root: a client pinned to
    // ours refuses to talk to it at all.
    let err = fleet
        .get(&foreign.api, "/v1/nodes")
        .await
        .expect_err("a client pinned to our root must refuse the foreign node");
    assert!(
        format!("{err:?}").contains("does not chain to the fleet root"),
        "{err:?}"
    );
}
