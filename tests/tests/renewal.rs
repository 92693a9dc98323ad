//! Certificate renewal on a real fleet: with 15-second MICs, nodes renew theirs from the anchor
//! over mutual-TLS QUIC before they expire, and the fleet stays whole past the first expiry.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nexus_tests::{Fleet, wait_until};
use serde_json::json;

fn serial_of(dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(dir.join("node.pem"))
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

#[tokio::test]
async fn nodes_renew_short_lived_certificates_without_leaving_the_fleet() {
    nexus_tests::set_nexus_env("NEXUS_CERT_LIFETIME", "15s");
    let mut fleet = Fleet::init().await.unwrap();
    for _ in 0..2 {
        let token = fleet.token(json!({})).await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        fleet.join(&token, &[]).await.unwrap();
    }
    let started = Instant::now();
    fleet.converge(3, "online", &[]).await.unwrap();
    let first = serial_of(&fleet.nodes[1].dir);

    // Renewed on disk and announced in gossip, well before the 15 s certificate expires.
    wait_until(
        Duration::from_secs(14),
        "node 1 renews its certificate",
        || async { serial_of(&fleet.nodes[1].dir) != first },
    )
    .await
    .unwrap();
    let renewed = serial_of(&fleet.nodes[1].dir);
    let node1 = fleet.nodes[1].node_id.clone();
    wait_until(
        Duration::from_secs(10),
        "the fleet sees the new serial",
        || async {
            fleet
                .get(&fleet.nodes[2].api, &format!("/v1/nodes/{node1}"))
                .await
                .is_ok_and(|(_, n)| n["certificate_serial"] == renewed.as_str())
        },
    )
    .await
    .unwrap();

    // Past the original certificates' expiry the fleet is still whole: gossip and QUIC use
    // the renewed ones.
    let past_expiry = Duration::from_secs(17).saturating_sub(started.elapsed());
    tokio::time::sleep(past_expiry).await;
    fleet.converge(3, "online", &[]).await.unwrap();
    let renewals = fleet
        .metric(
            &fleet.nodes[2].api,
            "nexus_mic_renewals_total",
            "outcome=\"renewed\"",
        )
        .await
        .unwrap();
    // Renewed when due, not on every check: with 15 s certificates and a 5 s window, at most a
    // couple of renewals fit in this test.
    assert!((1.0..=3.0).contains(&renewals), "renewals: {renewals}");
    // Every certificate the anchor issued is on its record.
    let (status, mics) = fleet
        .get(&fleet.anchor().api, &format!("/v1/mics?node_id={node1}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{mics}");
    let kinds: Vec<&str> = mics["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"join") && kinds.contains(&"renewal"),
        "{kinds:?}"
    );
}
