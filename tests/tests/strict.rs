//! Strict mode: nodes accept a peer's MIC only once an anchor proved it is in its transparency
//! log. A fleet converges under it; a MIC signed with the anchor's CA key but never logged (as
//! a stolen CA key would produce) is refused.

use std::path::Path;
use std::time::Duration;

use nexus_tests::{Fleet, wait_until};
use serde_json::json;

fn client_with(fleet: &Fleet, chain_pem: &str, key: &nexus_ca::NodeKey) -> reqwest::Client {
    nexus_tests::mic_client(&fleet.anchor().dir, chain_pem, key).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn strict_nodes_accept_logged_certificates_and_refuse_unlogged_ones() {
    nexus_tests::set_nexus_env("NEXUS_REQUIRE_LOGGED_CERTIFICATES", "true");
    let mut fleet = Fleet::init().await.unwrap();
    for _ in 0..2 {
        let token = fleet.token(json!({})).await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        fleet.join(&token, &[]).await.unwrap();
    }
    // Gossip from a peer is taken once its MIC is proven logged: the fleet still converges.
    fleet.converge(3, "online", &[]).await.unwrap();
    let proven = fleet
        .metric(
            &fleet.nodes[1].api,
            "nexus_mic_log_checks_total",
            "outcome=\"proven\"",
        )
        .await
        .unwrap();
    assert!(proven >= 1.0, "proofs checked: {proven}");

    // A node's own (logged) MIC opens another node's API, once proven.
    let node2 = &fleet.nodes[2];
    let key2 = nexus_ca::NodeKey::from_pkcs8_pem(&read(&node2.dir.join("node.key"))).unwrap();
    let logged = client_with(&fleet, &read(&node2.dir.join("node.pem")), &key2);
    let api1 = fleet.nodes[1].api.clone();
    wait_until(
        Duration::from_secs(15),
        "a logged MIC is accepted",
        || async {
            logged
                .get(format!("{api1}/v1/whoami"))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        },
    )
    .await
    .unwrap();

    // A MIC signed with the anchor's CA key outside the anchor (never logged) is refused, and
    // stays refused.
    let anchor_dir = fleet.anchor().dir.clone();
    let ca = nexus_ca::CertificateAuthority::load(
        &read(&anchor_dir.join("ca/intermediate.pem")),
        &read(&anchor_dir.join("ca/intermediate.key")),
    )
    .unwrap();
    let rogue = nexus_ca::NodeKey::generate();
    let mic = ca
        .issue_mic(
            &rogue.public_key(),
            &nexus_ca::MicProfile {
                fleet_id: fleet.anchor().fleet_id.clone(),
                node_id: rogue.node_id(),
                tenant: "default".into(),
                site: "hq".into(),
                role: nexus_ca::Role::Node,
                validity: Duration::from_secs(3600),
            },
        )
        .unwrap();
    let chain = nexus_ca::der_to_pem(&mic) + &ca.cert_pem();
    let unlogged = client_with(&fleet, &chain, &rogue);
    for _ in 0..6 {
        let answer = unlogged.get(format!("{api1}/v1/whoami")).send().await;
        assert!(
            answer.as_ref().map_or(true, |r| r.status().as_u16() == 401),
            "an unlogged MIC was accepted: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let unproven = fleet
        .metric(&api1, "nexus_mic_log_checks_total", "outcome=\"unproven\"")
        .await
        .unwrap();
    assert!(
        unproven >= 1.0,
        "the rogue MIC was looked up and not found: {unproven}"
    );
}
