//! Join tokens and anchors: every bad token, and every anchor that is not the token's, is
//! refused with a clear message, and nothing is admitted.

use std::path::Path;
use std::time::Duration;

use nexus_tests::{ANY_PORTS, Fleet};
use serde_json::json;

/// Tries to join with `token`; returns (exit ok, stderr).
fn try_join(dir: &Path, token: &str, extra: &[&str]) -> (bool, String) {
    let dir_s = dir.to_str().unwrap();
    let mut args = vec!["join", token, "--data-dir", dir_s, "--no-run"];
    args.extend(ANY_PORTS);
    args.extend(extra);
    let out = nexus_tests::run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "nexus panicked: {stderr}");
    (out.status.success(), stderr)
}

fn assert_refused(dir: &Path, token: &str, extra: &[&str], expect: &str) {
    let (ok, stderr) = try_join(dir, token, extra);
    assert!(!ok, "join with {expect:?} token must fail");
    assert!(
        stderr.contains(expect),
        "error should mention {expect:?}, got: {stderr}"
    );
    assert!(
        !dir.join("node.key").exists(),
        "nothing may be written on refusal"
    );
    assert!(
        !dir.join("nexus.db").exists(),
        "nothing may be written on refusal"
    );
}

async fn token_of(fleet: &Fleet, body: serde_json::Value) -> (String, String) {
    let created = fleet.token(body).await.unwrap();
    (
        created["token"].as_str().unwrap().to_string(),
        created["id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn bad_expired_reused_revoked_and_foreign_tokens_are_refused() {
    let fleet = Fleet::init().await.unwrap();
    let other = Fleet::init().await.unwrap();
    let root = fleet.root.path();

    // Not a token, and a corrupted one.
    assert_refused(&root.join("junk"), "hello", &[], "not a Nexus join token");
    let (good, _) = token_of(&fleet, json!({})).await;
    let mut corrupted = good.clone().into_bytes();
    let i = corrupted.len() / 2;
    corrupted[i] = if corrupted[i] == b'A' { b'B' } else { b'A' };
    assert_refused(
        &root.join("corrupt"),
        &String::from_utf8(corrupted).unwrap(),
        &[],
        "corrupted",
    );

    // Expired.
    let (short, _) = token_of(&fleet, json!({ "ttl_seconds": 1 })).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_refused(&root.join("late"), &short, &[], "expired");

    // Reused: the first join succeeds, the second is refused.
    let (once, _) = token_of(&fleet, json!({ "uses": 1 })).await;
    let (ok, stderr) = try_join(&root.join("first"), &once, &[]);
    assert!(ok, "first use must succeed: {stderr}");
    assert_refused(&root.join("second"), &once, &[], "already used");

    // Revoked with the CLI.
    let (revoked, revoked_id) = token_of(&fleet, json!({ "uses": 5 })).await;
    let ca_file = fleet.anchor().dir.join("trust").join("root.pem");
    let out = nexus_tests::run(&[
        "token",
        "revoke",
        &revoked_id,
        "--api",
        &fleet.anchor().api,
        "--ca-file",
        ca_file.to_str().unwrap(),
        "--key",
        &fleet.admin_key,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_refused(&root.join("revoked"), &revoked, &[], "revoked");

    // A token of another fleet, presented to this fleet's anchor.
    let (foreign, _) = token_of(&other, json!({})).await;
    assert_refused(
        &root.join("foreign"),
        &foreign,
        &["--anchor", &fleet.anchor().quic],
        "another fleet",
    );
    // This fleet's token, sent to an anchor whose certificate does not chain to its root.
    let (mine, _) = token_of(&fleet, json!({})).await;
    assert_refused(
        &root.join("impostor"),
        &mine,
        &["--anchor", &other.anchor().quic],
        "sha256:",
    );

    // Nothing was admitted: the anchor's token list shows exactly one use in all.
    let (_, tokens) = fleet.get(&fleet.anchor().api, "/v1/tokens").await.unwrap();
    let uses: u64 = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uses"].as_u64().unwrap())
        .sum();
    assert_eq!(uses, 1, "{tokens}");
    let states: Vec<&str> = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"revoked") && states.contains(&"used") && states.contains(&"expired"),
        "{states:?}"
    );
}

#[tokio::test]
async fn tokens_live_on_anchors_and_the_api_requires_a_key() {
    let mut fleet = Fleet::init().await.unwrap();
    let (token, _) = token_of(&fleet, json!({})).await;
    let node_api = fleet.join(&token, &[]).await.unwrap().api.clone();

    let http = nexus_tests::api_client(&fleet.nodes[1].dir).unwrap();
    for (method, path) in [
        ("GET", "/v1/nodes"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/tokens"),
    ] {
        let response = http
            .request(method.parse().unwrap(), format!("{node_api}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{method} {path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated");
        let response = http
            .request(method.parse().unwrap(), format!("{node_api}{path}"))
            .bearer_auth("nxk_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{method} {path}");
    }
    // The admin key works on the joined node, and token requests are sent to anchors.
    fleet.converge(2, "online", &[]).await.unwrap();
    let (status, body) = fleet.get(&node_api, "/v1/tokens").await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_an_anchor");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&fleet.anchor().api)
    );

    // Bad request bodies name the field.
    let response = http
        .post(format!("{}/v1/tokens", fleet.anchor().api))
        .bearer_auth(&fleet.admin_key)
        .json(&json!({ "uses": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("uses"),
        "{body}"
    );
}

#[tokio::test]
async fn two_machines_racing_for_a_single_use_token_admit_exactly_one() {
    let fleet = Fleet::init().await.unwrap();
    let (token, _) = token_of(&fleet, json!({ "uses": 1 })).await;
    let root = fleet.root.path().to_path_buf();
    let racers: Vec<_> = (0..4)
        .map(|i| {
            let (dir, token) = (root.join(format!("racer-{i}")), token.clone());
            std::thread::spawn(move || try_join(&dir, &token, &[]))
        })
        .collect();
    let outcomes: Vec<(bool, String)> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    let admitted = outcomes.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(admitted, 1, "{outcomes:?}");
    for (ok, stderr) in &outcomes {
        assert!(*ok || stderr.contains("already used"), "{stderr}");
    }
    let (_, tokens) = fleet.get(&fleet.anchor().api, "/v1/tokens").await.unwrap();
    assert_eq!(tokens["items"][0]["uses"], 1, "{tokens}");
}
