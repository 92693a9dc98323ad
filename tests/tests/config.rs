//! Replicated configuration with real processes: a route policy written on one node is on
//! every node, invalid ones are refused with the field, acknowledged writes survive kill -9,
//! and a node that joins later catches up.

use std::time::Duration;

use nexus_tests::{Fleet, NodeProc, wait_until};
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

async fn post(fleet: &Fleet, api: &str, body: Value) -> (u16, Value) {
    fleet.post_json(api, "/v1/routes", &body).await.unwrap()
}

async fn route_ids(fleet: &Fleet, api: &str) -> Vec<String> {
    fleet
        .get(api, "/v1/routes?limit=1000")
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

async fn join(fleet: &mut Fleet) {
    let token = fleet.token(json!({})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join(&token, &[]).await.unwrap();
}

#[tokio::test]
async fn a_route_written_anywhere_reaches_every_node_and_survives_kill_9() {
    let mut fleet = Fleet::init().await.unwrap();
    for _ in 0..3 {
        join(&mut fleet).await;
    }
    fleet.converge(4, "online", &[]).await.unwrap();
    // The fleet document (which registers the tenant) reaches the joined nodes.
    wait_until(
        Duration::from_secs(15),
        "every node holds the fleet document",
        || async { fleet.config_converged("fleet", 4).await },
    )
    .await
    .unwrap();

    // Written on a plain node, acknowledged only once stored.
    let writer = fleet.nodes[2].api.clone();
    let (status, body) = post(&fleet, &writer, route("r1", 10)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["tenant_id"], "default");
    for node in &fleet.nodes {
        wait_until(
            Duration::from_secs(10),
            "the route reaches every node",
            || async {
                route_ids(&fleet, &node.api)
                    .await
                    .contains(&"r1".to_string())
            },
        )
        .await
        .unwrap();
    }

    // Invalid input is refused with the field, and nothing is written.
    let (status, body) = post(&fleet, &writer, route("bad", 5000)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("priority"),
        "{body}"
    );
    let (status, body) = post(&fleet, &writer, json!({"id": "x"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        !route_ids(&fleet, &writer)
            .await
            .contains(&"bad".to_string())
    );

    // Replace and delete replicate too.
    let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
    let mut changed = route("r1", 20);
    changed["name"] = json!("renamed");
    let replaced = http
        .put(format!("{writer}/v1/routes/r1"))
        .bearer_auth(&fleet.admin_key)
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status().as_u16(), 200);
    let mismatched = http
        .put(format!("{writer}/v1/routes/other"))
        .bearer_auth(&fleet.admin_key)
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status().as_u16(), 400);
    let anchor_api = fleet.anchor().api.clone();
    wait_until(
        Duration::from_secs(10),
        "the replacement reaches the anchor",
        || async {
            fleet
                .get(&anchor_api, "/v1/routes/r1")
                .await
                .is_ok_and(|(_, r)| r["name"] == "renamed" && r["priority"] == 20)
        },
    )
    .await
    .unwrap();
    let (status, _) = post(&fleet, &writer, route("gone", 3)).await;
    assert_eq!(status, 201);
    let deleted = http
        .delete(format!("{}/v1/routes/gone", fleet.nodes[1].api))
        .bearer_auth(&fleet.admin_key)
        .send()
        .await
        .unwrap();
    // Written on one node, deleted on another (once it has it).
    assert!(matches!(deleted.status().as_u16(), 204 | 404));
    wait_until(
        Duration::from_secs(10),
        "the deletion reaches every node",
        || async {
            let _ = http
                .delete(format!("{}/v1/routes/gone", fleet.nodes[1].api))
                .bearer_auth(&fleet.admin_key)
                .send()
                .await;
            let mut everywhere = true;
            for node in &fleet.nodes {
                everywhere &= !route_ids(&fleet, &node.api)
                    .await
                    .contains(&"gone".to_string());
            }
            everywhere
        },
    )
    .await
    .unwrap();

    // kill -9 in the middle of a stream of writes: every acknowledged one is on the node's disk.
    // The writer keeps posting while the node is killed; only 201s count as acknowledged.
    let victim_api = fleet.nodes[3].api.clone();
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let (acks, http, key, api) = (
            acks.clone(),
            nexus_tests::api_client(&fleet.anchor().dir).unwrap(),
            fleet.admin_key.clone(),
            victim_api.clone(),
        );
        tokio::spawn(async move {
            for i in 0..200u32 {
                let id = format!("k{i}");
                let sent = http
                    .post(format!("{api}/v1/routes"))
                    .bearer_auth(&key)
                    .json(&route(&id, i % 1000))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => acks.lock().unwrap().push(id),
                    Ok(_) => {}
                    Err(_) => break, // the node is gone
                }
            }
        })
    };
    wait_until(
        Duration::from_secs(30),
        "writes are being acknowledged",
        || async { acks.lock().unwrap().len() >= 12 },
    )
    .await
    .unwrap();
    fleet.nodes[3].kill9();
    let _ = writer.await;
    let acknowledged = acks.lock().unwrap().clone();
    // Restart it with every other node stopped, so what it serves comes from its own disk.
    for i in [0, 1, 2] {
        fleet.nodes[i].terminate();
    }
    let dir = fleet.nodes[3].dir.clone();
    fleet.nodes[3] = NodeProc::run(&dir).await.unwrap();
    let held = route_ids(&fleet, &fleet.nodes[3].api).await;
    for id in &acknowledged {
        assert!(held.contains(id), "{id} lost after kill -9: {held:?}");
    }
    // The others come back on the addresses they had, which the fleet remembers.
    for i in [0, 1, 2] {
        let old = &fleet.nodes[i];
        let dir = old.dir.clone();
        let api = old.api.rsplit("//").next().unwrap().to_string();
        let (gossip, quic) = (old.gossip.clone(), old.quic.clone());
        let args = [
            "run",
            "--data-dir",
            dir.to_str().unwrap(),
            "--api",
            &api,
            "--gossip",
            &gossip,
            "--quic",
            &quic,
        ];
        fleet.nodes[i] = NodeProc::spawn(&dir, &args).await.unwrap();
    }
    fleet.converge(4, "online", &[]).await.unwrap();

    // A node that joins afterwards catches up by anti-entropy.
    join(&mut fleet).await;
    let late = fleet.nodes[4].api.clone();
    wait_until(
        Duration::from_secs(15),
        "a late node catches up",
        || async {
            let ids = route_ids(&fleet, &late).await;
            ids.contains(&"r1".to_string()) && acknowledged.iter().all(|id| ids.contains(id))
        },
    )
    .await
    .unwrap();

    // Every node reports the version it applies in the fleet view.
    let (_, nodes) = fleet.get(&fleet.anchor().api, "/v1/nodes").await.unwrap();
    let (_, routes) = fleet.get(&fleet.anchor().api, "/v1/routes").await.unwrap();
    let version = routes["config_version"].as_u64().unwrap();
    // Genesis, r1 written and replaced, "gone" written and deleted, and every acknowledged k*.
    assert!(version as usize >= 5 + acknowledged.len(), "{routes}");
    wait_until(
        Duration::from_secs(15),
        "every node reports the version",
        || async {
            fleet
                .get(&fleet.anchor().api, "/v1/nodes")
                .await
                .is_ok_and(|(_, n)| {
                    n["items"]
                        .as_array()
                        .is_some_and(|items| items.iter().all(|i| i["config_version"] == version))
                })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}: {nodes}"));

    // Every node reports the same version of the tenant document.
    wait_until(
        Duration::from_secs(15),
        "the fleet converges on one version",
        || async { fleet.config_converged("tenant/default", 5).await },
    )
    .await
    .unwrap();
}

/// Rows a node's SQLite file holds for a configuration document.
fn stored_chunks(dir: &std::path::Path, doc: &str) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("nexus.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(
        "SELECT count(*) FROM config_changes WHERE doc_id = ?1",
        [doc],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn a_tenants_configuration_never_reaches_another_tenants_nodes() {
    let mut fleet = Fleet::init().await.unwrap();
    join(&mut fleet).await; // tenant default
    let token = fleet.token(json!({"tenant": "blue"})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join(&token, &[]).await.unwrap(); // tenant blue
    fleet.converge(3, "online", &[]).await.unwrap();
    let blue = fleet.nodes[2].api.clone();
    wait_until(
        Duration::from_secs(15),
        "the blue node can write",
        || async { post(&fleet, &blue, route("b1", 1)).await.0 == 201 },
    )
    .await
    .unwrap();
    // The anchor holds every tenant's document; the blue node sees its route; the default
    // node sees none of it, through the API or in its database.
    wait_until(
        Duration::from_secs(10),
        "the anchor stores the blue route",
        || async { stored_chunks(&fleet.anchor().dir, "tenant/blue") >= 1 },
    )
    .await
    .unwrap();
    assert!(route_ids(&fleet, &blue).await.contains(&"b1".to_string()));
    let default_node = fleet.nodes[1].api.clone();
    // Give anti-entropy a few rounds to (wrongly) move it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !route_ids(&fleet, &default_node)
            .await
            .contains(&"b1".to_string())
    );
    assert_eq!(stored_chunks(&fleet.nodes[1].dir, "tenant/blue"), 0);
    // A route the default node writes stays in the default tenant.
    let (status, body) = post(&fleet, &default_node, route("d1", 2)).await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!route_ids(&fleet, &blue).await.contains(&"d1".to_string()));
    assert_eq!(stored_chunks(&fleet.nodes[2].dir, "tenant/default"), 0);

    // A blue node's certificate reads no default-tenant route through the default node's API:
    // that node does not hold blue's configuration and says where to ask (421), and asking for
    // the default tenant's objects reads as absent.
    let blue_client = nexus_tests::node_mic_client(&fleet.nodes[2].dir).unwrap();
    let seen = blue_client
        .get(format!("{default_node}/v1/routes"))
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status().as_u16(), 421);
    let seen: Value = seen.json().await.unwrap();
    assert!(seen.get("items").is_none(), "{seen}");
    for path in [
        "/v1/routes/d1",
        "/v1/routes/d1?tenant=default",
        "/v1/routes?tenant=default",
    ] {
        let one = blue_client
            .get(format!("{default_node}{path}"))
            .send()
            .await
            .unwrap();
        assert!(
            matches!(one.status().as_u16(), 404 | 421),
            "{path}: {}",
            one.status()
        );
    }
    // Through its own node, blue reads its own route and nothing of the default tenant's.
    let own: Value = blue_client
        .get(format!("{blue}/v1/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = own["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["b1"], "{own}");
}
