//! A second anchor: promoted by a fleet admin, it gets its own intermediate CA, restarts as an
//! anchor on the same addresses, admits nodes whose MICs every node trusts, and honours tokens
//! made at the first anchor (uses counted fleet-wide).

use std::process::Command;
use std::time::Duration;

use nexus_tests::{Fleet, wait_until};
use serde_json::{Value, json};

async fn post_json(fleet: &Fleet, api: &str, path: &str, body: Value) -> (u16, Value) {
    fleet.post_json(api, path, &body).await.unwrap()
}

#[tokio::test]
async fn a_promoted_node_becomes_a_second_anchor_that_admits_nodes() {
    let mut fleet = Fleet::init().await.unwrap();
    let token = fleet.token(json!({})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join(&token, &[]).await.unwrap();
    fleet.converge(2, "online", &[]).await.unwrap();
    let anchor_api = fleet.anchor().api.clone();
    let second = fleet.nodes[1].node_id.clone();
    let second_api = fleet.nodes[1].api.clone();

    // Refusals first: only the root holder promotes; bad and unknown ids are explained.
    let (status, body) = post_json(
        &fleet,
        &second_api,
        "/v1/anchors",
        json!({"node_id": second}),
    )
    .await;
    assert_eq!(status, 421, "{body}");
    let (status, body) = post_json(
        &fleet,
        &anchor_api,
        "/v1/anchors",
        json!({"node_id": "xyz"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let unknown = "0".repeat(32);
    let (status, body) = post_json(
        &fleet,
        &anchor_api,
        "/v1/anchors",
        json!({"node_id": unknown}),
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // Promote with the CLI.
    let out = nexus_tests::run(&[
        "anchor",
        "promote",
        &second,
        "--api",
        &anchor_api,
        "--ca-file",
        fleet.anchor().dir.join("trust/root.pem").to_str().unwrap(),
        "--key",
        &fleet.admin_key,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // It restarts as an anchor on the same API address; the fleet sees the new role.
    wait_until(
        Duration::from_secs(30),
        "the node becomes an anchor",
        || async {
            fleet
                .get(&anchor_api, &format!("/v1/nodes/{second}"))
                .await
                .is_ok_and(|(_, n)| n["role"] == "anchor" && n["status"] == "online")
        },
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(20),
        "its own API answers as an anchor",
        || async {
            fleet
                .get(&second_api, "/healthz")
                .await
                .is_ok_and(|(_, h)| h["role"] == "anchor")
        },
    )
    .await
    .unwrap();
    let (_, anchors) = fleet.get(&anchor_api, "/v1/anchors").await.unwrap();
    let states: Vec<&str> = anchors["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["state"].as_str())
        .collect();
    assert_eq!(states, vec!["active", "active"], "{anchors}");
    assert!(fleet.nodes[1].dir.join("ca/intermediate.pem").exists());

    // The new anchor admits a node with a token of its own; the node's MIC chains through the
    // new anchor's CA and openssl agrees.
    let (status, created) = post_json(&fleet, &second_api, "/v1/tokens", json!({})).await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let second_quic = fleet.nodes[1].quic.clone();
    fleet
        .join(&token, &["--anchor", &second_quic])
        .await
        .unwrap();
    let third_dir = fleet.nodes[2].dir.clone();
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(third_dir.join("trust/root.pem"))
        .arg("-untrusted")
        .arg(fleet.nodes[1].dir.join("ca/intermediate.pem"))
        .arg(third_dir.join("node.pem"))
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // Every node trusts MICs of the new CA: the fleet converges with it.
    fleet.converge(3, "online", &[]).await.unwrap();

    // A single-use token made at the first anchor works at the second, once, fleet-wide.
    let once = fleet.token(json!({"uses": 1})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let once_id = nexus_ca::JoinToken::decode(&once).unwrap().token_id;
    wait_until(
        Duration::from_secs(10),
        "the second anchor learns the token",
        || async {
            fleet
                .get(&second_api, "/v1/tokens")
                .await
                .is_ok_and(|(_, t)| {
                    t["items"]
                        .as_array()
                        .is_some_and(|i| i.iter().any(|t| t["id"] == once_id.as_str()))
                })
        },
    )
    .await
    .unwrap();
    fleet
        .join(&once, &["--anchor", &second_quic])
        .await
        .unwrap();
    fleet.converge(4, "online", &[]).await.unwrap();
    // Once gossip carried the use, the first anchor counts it and refuses a second join.
    wait_until(
        Duration::from_secs(10),
        "the first anchor counts the use",
        || async {
            fleet
                .get(&anchor_api, "/v1/tokens")
                .await
                .is_ok_and(|(_, t)| {
                    t["items"].as_array().is_some_and(|i| {
                        i.iter()
                            .any(|t| t["id"] == once_id.as_str() && t["uses"] == 1)
                    })
                })
        },
    )
    .await
    .unwrap();
    let first_quic = fleet.anchor().quic.clone();
    let dir = fleet.root.path().join("again");
    let out = nexus_tests::run(&[
        "join",
        &once,
        "--data-dir",
        dir.to_str().unwrap(),
        "--anchor",
        &first_quic,
        "--no-run",
        "--api",
        "127.0.0.1:0",
        "--gossip",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the single-use token was accepted twice"
    );
    assert!(stderr.contains("used"), "{stderr}");

    // Each anchor mirrors the other's transparency log and finds it consistent with the head
    // the other signed.
    for (here, there, there_id) in [
        (&anchor_api, &second_api, second.clone()),
        (&second_api, &anchor_api, fleet.anchor().node_id.clone()),
    ] {
        wait_until(
            Duration::from_secs(15),
            "the anchors mirror each other's logs",
            || async {
                let Ok((_, sth)) = fleet.get(there, "/v1/transparency/sth").await else {
                    return false;
                };
                fleet
                    .get(here, "/v1/transparency/mirrors")
                    .await
                    .is_ok_and(|(_, mirrors)| {
                        mirrors.as_array().is_some_and(|all| {
                            all.iter().any(|m| {
                                m["origin"] == there_id.as_str()
                                    && m["consistent"] == true
                                    && m["size"] == sth["size"]
                                    && m["root"] == sth["root"]
                            })
                        })
                    })
            },
        )
        .await
        .unwrap();
    }
}
