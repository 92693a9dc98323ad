//! Revocation end to end on a real fleet: the CRL standard tools read, a revoked node refused on
//! gossip, QUIC and the API by every other node, decommissioning revoking, and mTLS on the API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nexus_tests::{Fleet, NodeProc, wait_until as eventually};
use serde_json::{Value, json};

async fn joined_fleet(nodes: usize) -> Fleet {
    let mut fleet = Fleet::init().await.unwrap();
    for _ in 0..nodes {
        let token = fleet.token(json!({})).await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        fleet.join(&token, &[]).await.unwrap();
    }
    fleet.converge(nodes + 1, "online", &[]).await.unwrap();
    fleet
}

fn serial_of(dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(dir.join("node.pem"))
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("openssl said {text}"))
        .to_ascii_lowercase()
}

#[tokio::test]
async fn a_revoked_node_is_refused_everywhere_and_tools_agree() {
    let fleet = joined_fleet(3).await;
    let anchor = fleet.anchor().api.clone();
    let victim = &fleet.nodes[1];
    let serial = serial_of(&victim.dir);

    // The anchor publishes a (still empty) CRL at start; every node answers with it.
    let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
    eventually(
        Duration::from_secs(10),
        "every node holds the anchor's CRL",
        || async {
            http.get(format!("{}/v1/crl", fleet.nodes[2].api))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        },
    )
    .await
    .unwrap();

    // The node's own MIC is accepted on the API (mTLS) and may read, not write.
    let victim_client = nexus_tests::node_mic_client(&victim.dir).unwrap();
    let read = victim_client
        .get(format!("{}/v1/whoami", fleet.nodes[2].api))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let whoami: Value = read.json().await.unwrap();
    assert_eq!(whoami["identity"], format!("node:{}", victim.node_id));
    let write = victim_client
        .post(format!("{}/v1/tokens", anchor))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status().as_u16(), 403);

    // Bad input to revoke is refused with the reason.
    let (status, body) = fleet.post(&anchor, "/v1/mics/zz/revoke").await.unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = fleet
        .post(&fleet.nodes[2].api, &format!("/v1/mics/{serial}/revoke"))
        .await
        .unwrap();
    assert_eq!(
        status, 421,
        "a plain node sends revocations to anchors: {body}"
    );

    // Revoke the victim's MIC on the anchor.
    let (status, body) = fleet
        .post(&anchor, &format!("/v1/mics/{serial}/revoke"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["serial"], serial);
    assert!(body["revoked_at"].is_string(), "{body}");
    let number = body["crl_number"].as_u64().unwrap();
    assert!(number >= 2, "{body}");

    // Every other node learns it and says so.
    for node in [&fleet.nodes[0], &fleet.nodes[2], &fleet.nodes[3]] {
        eventually(
            Duration::from_secs(10),
            "the revocation reaches every node",
            || async {
                fleet
                    .get(&node.api, &format!("/v1/nodes/{}", victim.node_id))
                    .await
                    .is_ok_and(|(_, n)| n["certificate_revoked"] == true)
            },
        )
        .await
        .unwrap();
    }
    // Its gossip is dropped as revoked, and the fleet sees it go offline.
    for node in [&fleet.nodes[2], &fleet.nodes[3]] {
        eventually(
            Duration::from_secs(10),
            "gossip from the revoked node is dropped",
            || async {
                fleet
                    .metric(
                        &node.api,
                        "nexus_gossip_datagrams_dropped_total",
                        "reason=\"revoked\"",
                    )
                    .await
                    .is_ok_and(|v| v > 0.0)
            },
        )
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(15),
        "the revoked node goes offline",
        || async {
            fleet
                .get(
                    &fleet.nodes[2].api,
                    &format!("/v1/nodes/{}", victim.node_id),
                )
                .await
                .is_ok_and(|(_, n)| n["status"] == "offline")
        },
    )
    .await
    .unwrap();

    // Its certificate no longer opens the API of any node.
    let refused = victim_client
        .get(format!("{}/v1/nodes", fleet.nodes[3].api))
        .send()
        .await;
    assert!(
        refused
            .as_ref()
            .map_or(true, |r| r.status().as_u16() == 401),
        "{refused:?}"
    );

    // openssl agrees, with the CRL the API serves.
    let crl = http
        .get(format!("{}/v1/crl?format=pem", fleet.nodes[3].api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crl_path = dir.path().join("crl.pem");
    std::fs::write(&crl_path, &crl).unwrap();
    let text = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(&crl_path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&serial.to_uppercase()),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let verify = Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(fleet.anchor().dir.join("trust/root.pem"))
        .arg("-untrusted")
        .arg(fleet.anchor().dir.join("trust/intermediates.pem"))
        .arg("-CRLfile")
        .arg(&crl_path)
        .arg(victim.dir.join("node.pem"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        !verify.status.success() && said.contains("certificate revoked"),
        "{said}"
    );
    // The DER form parses too.
    let der = http
        .get(format!("{}/v1/crl?format=der", anchor))
        .send()
        .await
        .unwrap();
    assert_eq!(
        der.headers()["content-type"].to_str().unwrap(),
        "application/pkix-crl"
    );

    // Revoking again is idempotent.
    let (status, again) = fleet
        .post(&anchor, &format!("/v1/mics/{serial}/revoke"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["revoked_at"], body["revoked_at"]);
}

#[tokio::test]
async fn decommissioning_revokes_and_survives_restarts() {
    let mut fleet = joined_fleet(2).await;
    let target = fleet.nodes[1].node_id.clone();
    let serial = serial_of(&fleet.nodes[1].dir);
    // Decommission through a plain node: the anchor revokes when it sees it in gossip.
    let (status, body) = fleet
        .post(
            &fleet.nodes[2].api,
            &format!("/v1/nodes/{target}/decommission"),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let anchor = fleet.anchor().api.clone();
    eventually(
        Duration::from_secs(15),
        "the anchor revokes its certificate",
        || async {
            fleet
                .get(&anchor, &format!("/v1/mics/{serial}"))
                .await
                .is_ok_and(|(_, m)| m["revoke_reason"] == "cessation_of_operation")
        },
    )
    .await
    .unwrap();
    let other = fleet.nodes[2].api.clone();
    eventually(
        Duration::from_secs(10),
        "the CRL reaches the other node",
        || async {
            fleet
                .metric(&other, "nexus_revoked_certificates", "")
                .await
                .is_ok_and(|v| v >= 1.0)
        },
    )
    .await
    .unwrap();

    // The CLI shows the same: the certificate revoked, and a CRL openssl reads.
    let ca_file = fleet.anchor().dir.join("trust/root.pem");
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--api",
            &anchor,
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--key",
            &fleet.admin_key,
        ]);
        let out = nexus_tests::run(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let listed = cli(&["mics", "list", "--node", &target]);
    assert!(
        listed.contains(&serial) && listed.contains("cessation_of_operation"),
        "{listed}"
    );
    let crl = cli(&["mics", "crl"]);
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
    let bad = nexus_tests::run(&["mics", "revoke", "zz", "--api", &anchor, "--key", "k"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("serial"));

    // A restarted node still enforces the list it stored.
    assert!(fleet.nodes[2].terminate(), "clean exit on SIGTERM");
    let dir = fleet.nodes[2].dir.clone();
    fleet.nodes[2] = NodeProc::run(&dir).await.unwrap();
    let other = fleet.nodes[2].api.clone();
    let revoked = fleet
        .metric(&other, "nexus_revoked_certificates", "")
        .await
        .unwrap();
    assert!(revoked >= 1.0, "after restart: {revoked}");
}
