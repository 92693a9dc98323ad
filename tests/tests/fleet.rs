//! A fleet of real `nexus` processes: bootstrap, membership, failure detection, restarts and
//! operator actions.

use std::time::Duration;

use nexus_tests::{Fleet, NodeProc};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(20);

async fn fleet_of(n_nodes: usize) -> Fleet {
    let mut fleet = Fleet::init().await.expect("init");
    let token = fleet
        .token(json!({ "uses": n_nodes, "ttl_seconds": 600 }))
        .await
        .expect("token");
    let token = token["token"].as_str().expect("token string").to_string();
    for _ in 0..n_nodes {
        fleet
            .join(&token, &["--site", "edge-1"])
            .await
            .expect("join");
    }
    fleet
}

#[tokio::test]
async fn five_nodes_bootstrapped_from_one_token_all_see_each_other_online() {
    let fleet = fleet_of(4).await;
    fleet.converge(5, "online", &[]).await.unwrap();

    // Every node's view carries the node fields, including the site from the join.
    let (status, body) = fleet
        .get(
            &fleet.nodes[2].api,
            &format!("/v1/nodes/{}", fleet.nodes[3].node_id),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["site"], "edge-1");
    assert_eq!(body["role"], "node");
    assert_eq!(
        body["addresses"]["api"],
        fleet.nodes[3].api.trim_start_matches("https://")
    );
    let (_, anchor) = fleet
        .get(
            &fleet.nodes[4].api,
            &format!("/v1/nodes/{}", fleet.anchor().node_id),
        )
        .await
        .unwrap();
    assert_eq!(anchor["role"], "anchor");
    assert_eq!(anchor["site"], "hq");

    // Pagination walks all five exactly once.
    let (_, page1) = fleet
        .get(&fleet.nodes[1].api, "/v1/nodes?limit=2")
        .await
        .unwrap();
    let mut seen: Vec<String> = page1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .collect();
    let mut cursor = page1["next_cursor"].as_str().map(str::to_string);
    while let Some(c) = cursor {
        let (_, page) = fleet
            .get(
                &fleet.nodes[1].api,
                &format!("/v1/nodes?limit=2&cursor={c}"),
            )
            .await
            .unwrap();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["node_id"].as_str().unwrap().to_string()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    let mut expected: Vec<String> = fleet.nodes.iter().map(|n| n.node_id.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_killed_node_is_seen_offline_by_all_and_comes_back_with_the_same_id() {
    let mut fleet = fleet_of(3).await;
    fleet.converge(4, "online", &[]).await.unwrap();

    let victim_id = fleet.nodes[2].node_id.clone();
    let victim_dir = fleet.nodes[2].dir.clone();
    fleet.nodes[2].kill9();
    fleet
        .converge(4, "online", &[(&victim_id, "offline")])
        .await
        .unwrap();

    // Restart from disk: no token, same identity.
    let restarted = NodeProc::run(&victim_dir).await.expect("restart");
    assert_eq!(restarted.node_id, victim_id);
    fleet.nodes[2] = restarted;
    fleet.converge(4, "online", &[]).await.unwrap();
}

#[tokio::test]
async fn membership_survives_a_restart_of_the_whole_view() {
    let mut fleet = fleet_of(2).await;
    fleet.converge(3, "online", &[]).await.unwrap();
    // Stop a node cleanly and stop the node it would learn from; on restart it still lists
    // every node it knew (from SQLite) before gossip says anything.
    let dir = fleet.nodes[1].dir.clone();
    assert!(fleet.nodes[1].terminate(), "clean exit on SIGTERM");
    fleet.nodes[0].kill9();
    fleet.nodes[2].kill9();
    let alone = NodeProc::run(&dir).await.unwrap();
    let listed = fleet.statuses(&alone.api).await.unwrap();
    assert_eq!(
        listed.len(),
        3,
        "last known membership restored: {listed:?}"
    );
}

#[tokio::test]
async fn drain_and_decommission_reach_every_node() {
    let mut fleet = fleet_of(3).await;
    fleet.converge(4, "online", &[]).await.unwrap();
    let drained = fleet.nodes[1].node_id.clone();
    let gone = fleet.nodes[2].node_id.clone();

    // Operator actions can be sent to any node.
    let (status, body) = fleet
        .post(&fleet.nodes[3].api, &format!("/v1/nodes/{drained}/drain"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "draining");
    let (status, body) = fleet
        .post(
            &fleet.anchor().api,
            &format!("/v1/nodes/{gone}/decommission"),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    nexus_tests::wait_until(CONVERGE, "drain and decommission everywhere", || {
        let fleet = &fleet;
        let (d, g) = (drained.clone(), gone.clone());
        async move {
            let mut ok = true;
            for node in fleet.nodes.iter().filter(|n| n.node_id != g) {
                let Ok(statuses) = fleet.statuses(&node.api).await else {
                    return false;
                };
                ok &= statuses.iter().any(|(id, s)| *id == d && s == "draining");
                ok &= statuses
                    .iter()
                    .any(|(id, s)| *id == g && s == "decommissioned");
            }
            ok
        }
    })
    .await
    .unwrap();
    // The decommissioned node learns it and stops, saying why.
    wait_for_exit(&mut fleet.nodes[2]).await;

    // Restarted (say, by its supervisor), its gossip is refused and counted, and it is told again.
    let denied_before = denied_drops(&fleet).await;
    let dir = fleet.nodes[2].dir.clone();
    let dir_s = dir.to_str().unwrap().to_string();
    // It may be told before it even serves: do not wait for that.
    fleet.nodes[2] = NodeProc::start(&dir, &["run", "--data-dir", &dir_s])
        .expect("spawn the decommissioned node");
    wait_for_exit(&mut fleet.nodes[2]).await;
    assert!(
        denied_drops(&fleet).await > denied_before,
        "its datagrams were dropped as denied"
    );
    // Decommissioning is final.
    let (status, body) = fleet
        .post(&fleet.nodes[3].api, &format!("/v1/nodes/{gone}/drain"))
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
}

/// Waits until `node` exits on its own, unsuccessfully, saying it was decommissioned.
async fn wait_for_exit(node: &mut NodeProc) {
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = node.exited() {
            break status;
        }
        assert!(
            started.elapsed() < CONVERGE,
            "the decommissioned node kept running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    assert!(node.log().contains("was decommissioned"), "{}", node.log());
}

/// Datagrams the running nodes dropped because their sender is denied.
async fn denied_drops(fleet: &Fleet) -> f64 {
    let mut total = 0.0;
    for node in fleet.nodes.iter().filter(|n| n.pid().is_some()) {
        total += fleet
            .metric(
                &node.api,
                "nexus_gossip_datagrams_dropped_total",
                "reason=\"denied\"",
            )
            .await
            .unwrap_or(0.0);
    }
    total
}
