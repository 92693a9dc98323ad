//! Anchor CA renewal: with 24-second anchor CAs, a promoted anchor has the root holder
//! re-certify its CA key before it expires, restarts on it, and keeps admitting nodes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nexus_tests::{Fleet, wait_until};
use serde_json::json;

fn not_after(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(pem)
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_promoted_anchor_renews_its_ca_before_it_expires() {
    nexus_tests::set_nexus_env("NEXUS_CA_LIFETIME", "24s");
    let mut fleet = Fleet::init().await.unwrap();
    let token = fleet.token(json!({})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join(&token, &[]).await.unwrap();
    fleet.converge(2, "online", &[]).await.unwrap();
    let second = fleet.nodes[1].node_id.clone();
    let (status, body) = {
        let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
        let response = http
            .post(format!("{}/v1/anchors", fleet.anchor().api))
            .bearer_auth(&fleet.admin_key)
            .json(&json!({ "node_id": second }))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(status, 202, "{body}");
    let ca_pem = fleet.nodes[1].dir.join("ca/intermediate.pem");
    wait_until(
        Duration::from_secs(20),
        "the promotion completes",
        || async { ca_pem.exists() },
    )
    .await
    .unwrap();
    let first = not_after(&ca_pem);

    // A third of 24 s before expiry, the anchor has the root re-certify its key.
    wait_until(
        Duration::from_secs(30),
        "the anchor CA is renewed",
        || async { not_after(&ca_pem) != first },
    )
    .await
    .unwrap();
    // The renewed anchor is back (it restarted on the same addresses) and still admits nodes.
    let second_api = fleet.nodes[1].api.clone();
    wait_until(
        Duration::from_secs(20),
        "the anchor serves again",
        || async {
            fleet
                .get(&second_api, "/healthz")
                .await
                .is_ok_and(|(_, h)| h["role"] == "anchor")
        },
    )
    .await
    .unwrap();
    let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
    let created: serde_json::Value = http
        .post(format!("{second_api}/v1/tokens"))
        .bearer_auth(&fleet.admin_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let quic = fleet.nodes[1].quic.clone();
    fleet.join(&token, &["--anchor", &quic]).await.unwrap();
    fleet.converge(3, "online", &[]).await.unwrap();
}
