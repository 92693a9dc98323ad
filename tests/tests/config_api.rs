//! The configuration API with real processes: tenants (written on anchors), merge-patching a
//! route, site-scoped routes, firmware targets, snapshots rolled back from another node, and a
//! route that becomes invalid after the fact being quarantined everywhere.

use std::time::Duration;

use nexus_tests::{Fleet, wait_until};
use serde_json::{Value, json};

fn route(id: &str, priority: u32) -> Value {
    json!({
        "id": id,
        "name": format!("route {id}"),
        "tenant_id": "",
        "priority": priority,
        "match": {"source_node_ids": [], "dest_capabilities": [], "stream_modes": ["RO"], "message_types": [7]},
        "action": {"type": "allow"},
        "enabled": true,
        "created_at": 0
    })
}

async fn send(
    fleet: &Fleet,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
    let mut request = http.request(method, url).bearer_auth(&fleet.admin_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        headers,
    )
}

async fn ids(fleet: &Fleet, api: &str, path: &str) -> Vec<String> {
    fleet
        .get(api, path)
        .await
        .map(|(_, b)| {
            b["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|r| r["id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

async fn everywhere(fleet: &Fleet, path: &str, want: &[&str]) {
    for node in &fleet.nodes {
        let api = node.api.clone();
        wait_until(
            Duration::from_secs(15),
            &format!("{path} = {want:?}"),
            || async { ids(fleet, &api, path).await == want },
        )
        .await
        .unwrap();
    }
}

async fn join(fleet: &mut Fleet) {
    let token = fleet.token(json!({})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join(&token, &[]).await.unwrap();
}

#[tokio::test]
async fn tenants_patch_sites_firmware_snapshots_and_quarantine() {
    let mut fleet = Fleet::init().await.unwrap();
    join(&mut fleet).await;
    join(&mut fleet).await;
    fleet.converge(3, "online", &[]).await.unwrap();
    wait_until(
        Duration::from_secs(15),
        "every node holds the fleet document",
        || async { fleet.config_converged("fleet", 3).await },
    )
    .await
    .unwrap();
    let anchor = fleet.anchor().api.clone();
    let plain = fleet.nodes[1].api.clone();
    let other = fleet.nodes[2].api.clone();
    use reqwest::Method;

    // --- tenants: written on an anchor, readable everywhere ---------------------------------
    let acme = json!({"id": "acme", "name": "Acme Corp", "quotas": {"max_nodes": 5}});
    let (status, body, headers) = send(
        &fleet,
        Method::POST,
        format!("{anchor}/v1/tenants"),
        Some(acme.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(headers["location"], "/v1/tenants/acme");
    assert!(headers.contains_key("x-config-version"));
    assert_eq!(body["id"], "acme");
    assert_eq!(body["quotas"]["max_nodes"], 5);
    // A plain node cannot write the fleet document and says where to go.
    let (status, body, _) = send(
        &fleet,
        Method::POST,
        format!("{plain}/v1/tenants"),
        Some(json!({"id": "x", "name": "X"})),
    )
    .await;
    assert_eq!(status, 421, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anchor"),
        "{body}"
    );
    // Invalid values are refused with the field, nothing written.
    let (status, body, _) = send(
        &fleet,
        Method::POST,
        format!("{anchor}/v1/tenants"),
        Some(json!({"id": "bad", "name": "Bad", "quotas": {"max_nodes": 0}})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_nodes"),
        "{body}"
    );
    let (status, body, _) = send(
        &fleet,
        Method::POST,
        format!("{anchor}/v1/tenants"),
        Some(json!({"id": "typo", "name": "T", "quotaz": {}})),
    )
    .await;
    assert_eq!(
        status, 400,
        "unknown fields are refused, not ignored: {body}"
    );
    // PATCH merges.
    let (status, body, _) = send(
        &fleet,
        Method::PATCH,
        format!("{anchor}/v1/tenants/acme"),
        Some(json!({"quotas": {"max_connections": 100}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["quotas"]["max_nodes"], 5);
    assert_eq!(body["quotas"]["max_connections"], 100);
    everywhere(&fleet, "/v1/tenants", &["acme", "default"]).await;
    let (status, _, _) = send(
        &fleet,
        Method::DELETE,
        format!("{anchor}/v1/tenants/acme"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    everywhere(&fleet, "/v1/tenants", &["default"]).await;

    // --- routes: POST creates once, PUT replaces, PATCH is a JSON merge patch ---------------
    let (status, body, _) = send(
        &fleet,
        Method::POST,
        format!("{plain}/v1/routes"),
        Some(route("r1", 10)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let created_at = body["created_at"].as_i64().unwrap();
    assert!(created_at > 0);
    let (status, body, _) = send(
        &fleet,
        Method::POST,
        format!("{plain}/v1/routes"),
        Some(route("r1", 11)),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("PUT"),
        "{body}"
    );
    let (status, body, _) = send(
        &fleet,
        Method::PUT,
        format!("{plain}/v1/routes/r1"),
        Some(route("r1", 10)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["created_at"], created_at,
        "a replacement keeps the creation time"
    );
    let (status, body, _) = send(
        &fleet,
        Method::PATCH,
        format!("{other}/v1/routes/r1"),
        Some(json!({"priority": 3})),
    )
    .await;
    // Written on one node, patched on another once it arrived.
    let (status, body) = if status == 404 {
        wait_until(
            Duration::from_secs(10),
            "r1 reaches the other node",
            || async {
                ids(&fleet, &other, "/v1/routes")
                    .await
                    .contains(&"r1".to_string())
            },
        )
        .await
        .unwrap();
        let (s, b, _) = send(
            &fleet,
            Method::PATCH,
            format!("{other}/v1/routes/r1"),
            Some(json!({"priority": 3})),
        )
        .await;
        (s, b)
    } else {
        (status, body)
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["priority"], 3);
    assert_eq!(body["name"], "route r1", "fields not in the patch are kept");
    let (status, _, _) = send(
        &fleet,
        Method::PATCH,
        format!("{other}/v1/routes/r1"),
        Some(json!({"id": "r9"})),
    )
    .await;
    assert_eq!(status, 400, "an id cannot be patched");
    let (status, _, _) = send(
        &fleet,
        Method::PATCH,
        format!("{other}/v1/routes/nope"),
        Some(json!({"priority": 1})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body, _) = send(
        &fleet,
        Method::PATCH,
        format!("{other}/v1/routes/r1"),
        Some(json!({"action": {"type": "ratelimit"}})),
    )
    .await;
    assert_eq!(status, 422, "a ratelimit without a rate is refused: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate_limit"),
        "{body}"
    );

    // --- site-scoped routes ----------------------------------------------------------------
    let (status, body, headers) = send(
        &fleet,
        Method::POST,
        format!("{plain}/v1/sites/edge-1/routes"),
        Some(route("s1", 50)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(headers["location"], "/v1/sites/edge-1/routes/s1");
    everywhere(&fleet, "/v1/sites/edge-1/routes", &["s1"]).await;
    assert!(
        ids(&fleet, &anchor, "/v1/sites/edge-2/routes")
            .await
            .is_empty()
    );
    assert_eq!(
        ids(&fleet, &anchor, "/v1/routes").await,
        ["r1"],
        "site routes are separate"
    );

    // --- firmware targets ------------------------------------------------------------------
    let target = json!({
        "id": "fw-2026-12",
        "version": "4.2.0",
        "image_sha256": "a".repeat(64),
        "selector": {"rack": "r1"},
        "batch_size": 10,
        "max_unavailable_percent": 10,
        "health_timeout_s": 120,
        "created_at": 0
    });
    let (status, body, _) = send(
        &fleet,
        Method::POST,
        format!("{plain}/v1/firmware/targets"),
        Some(target.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut bad = target.clone();
    bad["id"] = json!("fw-bad");
    bad["image_sha256"] = json!("not-a-hash");
    let (status, body, _) = send(
        &fleet,
        Method::POST,
        format!("{plain}/v1/firmware/targets"),
        Some(bad),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image_sha256"),
        "{body}"
    );
    everywhere(&fleet, "/v1/firmware/targets", &["fw-2026-12"]).await;

    // --- snapshots: taken on one node, rolled back from another ----------------------------
    everywhere(&fleet, "/v1/routes", &["r1"]).await;
    let (status, snap, headers) = send(
        &fleet,
        Method::POST,
        format!("{plain}/v1/config/snapshots"),
        Some(json!({"name": "before the change window"})),
    )
    .await;
    assert_eq!(status, 201, "{snap}");
    let snap_id = snap["id"].as_str().unwrap().to_string();
    assert_eq!(
        headers["location"],
        format!("/v1/config/snapshots/{snap_id}")
    );
    assert_eq!(snap["document"], "tenant/default");
    send(
        &fleet,
        Method::POST,
        format!("{plain}/v1/routes"),
        Some(route("r2", 20)),
    )
    .await;
    let (status, _, _) = send(
        &fleet,
        Method::DELETE,
        format!("{plain}/v1/routes/r1"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    everywhere(&fleet, "/v1/routes", &["r2"]).await;
    wait_until(
        Duration::from_secs(10),
        "the snapshot replicates",
        || async {
            fleet
                .get(&other, &format!("/v1/config/snapshots/{snap_id}"))
                .await
                .is_ok_and(|(s, b)| s == 200 && b["name"] == "before the change window")
        },
    )
    .await
    .unwrap();
    let (status, body, _) = send(
        &fleet,
        Method::POST,
        format!("{other}/v1/config/snapshots/{snap_id}/rollback"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    everywhere(&fleet, "/v1/routes", &["r1"]).await;
    let (_, r1) = fleet.get(&anchor, "/v1/routes/r1").await.unwrap();
    assert_eq!(
        r1["priority"], 3,
        "the state at the snapshot, patch included: {r1}"
    );
    let (status, _, _) = send(
        &fleet,
        Method::POST,
        format!("{other}/v1/config/snapshots/0000000000000000000/rollback"),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // --- quarantine: a redirect whose target is decommissioned ----------------------------
    let target_node = fleet.nodes[2].node_id.clone();
    let mut redirect = route("rd", 5);
    redirect["action"] = json!({"type": "redirect", "redirect_node_id": target_node});
    let (status, body, _) = send(
        &fleet,
        Method::POST,
        format!("{plain}/v1/routes"),
        Some(redirect),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    everywhere(&fleet, "/v1/routes", &["r1", "rd"]).await;
    let (status, _) = fleet
        .post(&anchor, &format!("/v1/nodes/{target_node}/decommission"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The route stays in the document but is applied nowhere: left out of lists, shown with
    // its reason, counted in /v1/config/status and the metric.
    for api in [&anchor, &plain] {
        wait_until(Duration::from_secs(15), "rd is quarantined", || async {
            ids(&fleet, api, "/v1/routes").await == ["r1"]
        })
        .await
        .unwrap();
        let (status, rd) = fleet.get(api, "/v1/routes/rd").await.unwrap();
        assert_eq!(status, 200);
        let reasons = rd["quarantined"]
            .as_array()
            .unwrap_or_else(|| panic!("{rd}"));
        assert!(
            reasons
                .iter()
                .any(|r| r.as_str().unwrap().contains("redirect_node_id")),
            "{rd}"
        );
        let (_, status) = fleet.get(api, "/v1/config/status").await.unwrap();
        let local = status["local"].as_array().unwrap();
        let tenant = local
            .iter()
            .find(|d| d["document"] == "tenant/default")
            .unwrap();
        assert!(
            tenant["quarantined"]
                .as_array()
                .unwrap()
                .iter()
                .any(|q| q["object"] == "routes.rd"),
            "{status}"
        );
        assert_eq!(
            fleet
                .metric(
                    api,
                    "nexus_config_quarantined_objects",
                    "document=\"tenant/default\""
                )
                .await
                .unwrap(),
            1.0
        );
    }
}
