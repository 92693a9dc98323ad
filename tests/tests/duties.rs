//! Fleet duties with real processes: one holder per duty among the anchors, the lifecycle duty
//! (offline flags, removal of decommissioned nodes after their grace), the garbage-collection
//! duty (configuration naming removed nodes), take-over when the holder dies, and a partition
//! in which both anchors hold the duties at once and the fleet still ends up consistent.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nexus_tests::netns::Sites;
use nexus_tests::{Fleet, NodeProc, wait_until};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(40);

/// Short leases and graces so the rules play out in seconds.
fn fast_duties(decommission_grace: &str) {
    nexus_tests::set_nexus_env("NEXUS_DUTIES_LEASE", "3s");
    nexus_tests::set_nexus_env("NEXUS_DUTIES_GC_INTERVAL", "1s");
    nexus_tests::set_nexus_env("NEXUS_DUTIES_OFFLINE_GRACE", "2s");
    nexus_tests::set_nexus_env("NEXUS_DECOMMISSION_GRACE", decommission_grace);
}

async fn duties(fleet: &Fleet, api: &str) -> BTreeMap<String, Value> {
    let Ok((200, body)) = fleet.get(api, "/v1/fleet/duties").await else {
        return BTreeMap::new();
    };
    body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| Some((d["name"].as_str()?.to_string(), d)))
        .collect()
}

/// Both anchors name the same holder (one of them) for every duty, and exactly one of them
/// says it holds it.
async fn one_holder(fleet: &Fleet, anchors: &[&str]) -> bool {
    let mut views = Vec::new();
    for api in anchors {
        views.push(duties(fleet, api).await);
    }
    ["lifecycle", "gc"].iter().all(|name| {
        let holders: Vec<&Value> = views.iter().filter_map(|v| v.get(*name)).collect();
        holders.len() == anchors.len()
            && holders[0]["holder"].is_string()
            && holders
                .iter()
                .all(|d| d["holder"] == holders[0]["holder"] && d["epoch"] == holders[0]["epoch"])
            && holders.iter().filter(|d| d["held_here"] == true).count() == 1
    })
}

async fn expect_one_holder(fleet: &Fleet, anchors: &[&str], what: &str) {
    if let Err(err) = wait_until(SETTLE, what, || one_holder(fleet, anchors)).await {
        let mut views = Vec::new();
        for api in anchors {
            views.push(duties(fleet, api).await);
        }
        let logs: Vec<String> = fleet.nodes[..2]
            .iter()
            .map(|n| {
                n.log()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("duty"))
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        panic!("{err:#}: {views:#?}\nlogs:\n{}", logs.join("\n----\n"));
    }
}

async fn promote(fleet: &Fleet, node: &str, node_api: &str) {
    let anchor = fleet.anchor().api.clone();
    let (status, body) = fleet
        .post_json(&anchor, "/v1/anchors", &json!({ "node_id": node }))
        .await
        .unwrap();
    assert!(
        status == 200 || status == 201 || status == 202,
        "{status} {body}"
    );
    wait_until(SETTLE, "the node restarts as an anchor", || async {
        fleet
            .get(node_api, "/healthz")
            .await
            .is_ok_and(|(_, h)| h["role"] == "anchor")
            && fleet
                .get(&anchor, &format!("/v1/nodes/{node}"))
                .await
                .is_ok_and(|(_, n)| n["role"] == "anchor" && n["status"] == "online")
    })
    .await
    .unwrap();
}

/// A route whose only source is `gone`, one with `gone` and `stays`, and labels on `gone`
/// (a node override): what garbage collection must clean up once `gone` is removed.
async fn configuration_naming(fleet: &Fleet, gone: &str, stays: &str) {
    let anchor = fleet.anchor().api.clone();
    for (id, sources) in [("only-gone", vec![gone]), ("mixed", vec![gone, stays])] {
        let (status, body) = fleet
            .post_json(
                &anchor,
                "/v1/routes?tenant=default",
                &json!({
                    "id": id,
                    "name": id,
                    "priority": 10,
                    "match": {"source_node_ids": sources},
                    "action": {"type": "deny"},
                }),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = fleet
        .send_json(
            reqwest::Method::PATCH,
            &anchor,
            &format!("/v1/nodes/{gone}/labels"),
            &json!({"labels": {"rack": "r7"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Whether `api` shows the configuration `gone`'s removal leaves: no `only-gone`, `mixed`
/// with `stays` alone.
async fn cleaned(fleet: &Fleet, api: &str, stays: &str) -> bool {
    let only = fleet.get(api, "/v1/routes/only-gone?tenant=default").await;
    let mixed = fleet.get(api, "/v1/routes/mixed?tenant=default").await;
    matches!(only, Ok((404, _)))
        && mixed.is_ok_and(|(s, m)| s == 200 && m["match"]["source_node_ids"] == json!([stays]))
}

/// `(collection, key) → value` of one document in a node's SQLite file, read-only.
fn stored(dir: &Path, doc: &str, collection: &str) -> BTreeMap<String, Value> {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("nexus.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare("SELECT key, value FROM config_objects WHERE doc_id = ?1 AND collection = ?2")
        .unwrap();
    stmt.query_map([doc, collection], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })
    .unwrap()
    .filter_map(Result::ok)
    .filter_map(|(k, v)| Some((k, serde_json::from_str(&v?).ok()?)))
    .collect()
}

#[tokio::test]
async fn one_anchor_holds_each_duty_runs_lifecycle_and_gc_and_a_survivor_takes_over() {
    fast_duties("3s");
    let mut fleet = Fleet::init().await.unwrap();
    let token = fleet.token(json!({"uses": 3})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        fleet.join(&token, &[]).await.unwrap();
    }
    fleet.converge(4, "online", &[]).await.unwrap();
    let (second, second_api) = (fleet.nodes[1].node_id.clone(), fleet.nodes[1].api.clone());
    // Every node's replica of the fleet document names the holder (it replicates like any
    // configuration), so an anchor promoted later knows the duties are taken.
    let dir = fleet.nodes[1].dir.clone();
    wait_until(SETTLE, "the duty records reach the other nodes", || {
        let dir = dir.clone();
        async move { stored(&dir, "fleet", "duties").len() == 2 }
    })
    .await
    .unwrap();
    promote(&fleet, &second, &second_api).await;
    let first_api = fleet.anchor().api.clone();
    let anchors = [first_api.as_str(), second_api.as_str()];
    expect_one_holder(
        &fleet,
        &anchors,
        "one holder per duty, agreed by both anchors",
    )
    .await;
    let view = duties(&fleet, &first_api).await;
    assert_eq!(
        view["gc"]["holder"],
        json!(fleet.anchor().node_id),
        "the first anchor took the duties and keeps them while it lives: {view:?}\n{}",
        fleet.nodes[1]
            .log()
            .lines()
            .filter(|l| l.contains("duty") || l.contains("promot") || l.contains("anchor"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Decommission a node that configuration names: after its grace it is removed, and the
    // routes and override naming it are cleaned up on both anchors.
    let (gone, stays) = (
        fleet.nodes[3].node_id.clone(),
        fleet.nodes[2].node_id.clone(),
    );
    configuration_naming(&fleet, &gone, &stays).await;
    let (status, body) = fleet
        .post(&first_api, &format!("/v1/nodes/{gone}/decommission"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    for (i, api) in anchors.iter().enumerate() {
        if let Err(err) = wait_until(
            SETTLE,
            "configuration naming the removed node cleaned up",
            || cleaned(&fleet, api, &stays),
        )
        .await
        {
            let dir = &fleet.nodes[i].dir;
            panic!(
                "{err:#}\nduties: {:?}\nmembers: {:?}\nroutes: {:?}\nlog: {}",
                duties(&fleet, api).await,
                stored(dir, "fleet", "members").get(&gone),
                stored(dir, "tenant/default", "routes"),
                fleet.nodes[i]
                    .log()
                    .lines()
                    .filter(|l| l.contains("dut") || l.contains("garbage") || l.contains("WARN"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    for node in [&fleet.nodes[0], &fleet.nodes[1]] {
        let members = stored(&node.dir, "fleet", "members");
        assert!(
            members[&gone]["removed_at"].is_i64(),
            "removed in {}: {:?}",
            node.dir.display(),
            members[&gone]
        );
        // The same sweep removes its override; it reaches the other anchor a moment later.
        let dir = node.dir.clone();
        wait_until(SETTLE, "the removed node's override is gone", || {
            let (dir, gone) = (dir.clone(), gone.clone());
            async move { !stored(&dir, "tenant/default", "node_overrides").contains_key(&gone) }
        })
        .await
        .unwrap();
    }

    // A node offline past the grace is flagged, and unflagged when it returns.
    fleet.nodes[2].kill9();
    wait_until(SETTLE, "the dead node is flagged offline", || async {
        fleet
            .get(&first_api, &format!("/v1/nodes/{stays}"))
            .await
            .is_ok_and(|(_, n)| n["status"] == "offline" && n["offline_since"].is_string())
    })
    .await
    .unwrap();
    let dir = fleet.nodes[2].dir.clone();
    fleet.nodes[2] = NodeProc::run(&dir).await.unwrap();
    wait_until(SETTLE, "the returned node is no longer flagged", || async {
        fleet
            .get(&first_api, &format!("/v1/nodes/{stays}"))
            .await
            .is_ok_and(|(_, n)| n["status"] == "online" && n["offline_since"].is_null())
    })
    .await
    .unwrap();

    // The holder dies: the other anchor takes every duty once the lease ran out, one epoch up.
    let before = duties(&fleet, &first_api).await;
    let holder = before["gc"]["holder"].as_str().unwrap().to_string();
    let (dead, survivor) = if holder == fleet.anchor().node_id {
        (0, 1)
    } else {
        (1, 0)
    };
    fleet.nodes[dead].kill9();
    let survivor_api = fleet.nodes[survivor].api.clone();
    let survivor_id = fleet.nodes[survivor].node_id.clone();
    wait_until(
        SETTLE,
        "the surviving anchor takes the duties over",
        || async {
            let view = duties(&fleet, &survivor_api).await;
            ["lifecycle", "gc"].iter().all(|d| {
                view.get(*d).is_some_and(|v| {
                    v["holder"] == json!(survivor_id)
                        && v["held_here"] == true
                        && v["epoch"].as_u64() > before[*d]["epoch"].as_u64()
                })
            })
        },
    )
    .await
    .unwrap();
}

/// Two anchors in two sites; the link between them is cut: each side holds the duties (the
/// cut-off one takes them when the lease runs out there) and both remove a decommissioned
/// node's configuration on their own. Healed, the documents merge into one consistent state:
/// one holder per duty, the route deleted (not back), the shared route's sources rewritten
/// once (not twice), the same removal record on both anchors.
#[tokio::test]
async fn partitioned_anchors_both_hold_the_duties_and_converge_when_healed() {
    fast_duties("12s");
    let sites = Sites::create(2).expect("sites");
    let (site0, site1) = (sites.site(0), sites.site(1));
    let mut fleet = Fleet::init_in(&site0, &[]).await.unwrap();
    let token = fleet.token(json!({"uses": 3})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join_in(&site1, &token, &[]).await.unwrap();
    fleet.join_in(&site0, &token, &[]).await.unwrap();
    fleet.join_in(&site1, &token, &[]).await.unwrap();
    fleet.converge(4, "online", &[]).await.unwrap();
    let (second, second_api) = (fleet.nodes[1].node_id.clone(), fleet.nodes[1].api.clone());
    promote(&fleet, &second, &second_api).await;
    let first_api = fleet.anchor().api.clone();
    let anchors = [first_api.as_str(), second_api.as_str()];
    expect_one_holder(&fleet, &anchors, "one holder per duty").await;
    let before = duties(&fleet, &first_api).await;

    let (gone, stays) = (
        fleet.nodes[2].node_id.clone(),
        fleet.nodes[3].node_id.clone(),
    );
    configuration_naming(&fleet, &gone, &stays).await;
    let (status, body) = fleet
        .post(&first_api, &format!("/v1/nodes/{gone}/decommission"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // Both anchors record the decommission before the cut.
    for node in [&fleet.nodes[0], &fleet.nodes[1]] {
        let dir = node.dir.clone();
        wait_until(SETTLE, "both anchors record the decommission", || {
            let dir = dir.clone();
            let gone = gone.clone();
            async move {
                stored(&dir, "fleet", "members")
                    .get(&gone)
                    .is_some_and(|m| m["decommissioned_at"].is_i64())
                    && stored(&dir, "tenant/default", "routes").contains_key("mixed")
            }
        })
        .await
        .unwrap();
    }

    sites.cut(1).unwrap();
    // Each side holds both duties and cleans up on its own: nothing crosses the cut.
    for api in anchors {
        wait_until(SETTLE, "each side holds the duties", || async {
            let view = duties(&fleet, api).await;
            ["lifecycle", "gc"]
                .iter()
                .all(|d| view.get(*d).is_some_and(|v| v["held_here"] == true))
        })
        .await
        .unwrap();
        wait_until(SETTLE, "each side removes the node's configuration", || {
            cleaned(&fleet, api, &stays)
        })
        .await
        .unwrap();
    }
    let cut_views = [
        duties(&fleet, &first_api).await,
        duties(&fleet, &second_api).await,
    ];
    assert_ne!(
        cut_views[0]["gc"]["holder"], cut_views[1]["gc"]["holder"],
        "two holders during the partition: {cut_views:?}"
    );
    let taken_over = cut_views
        .iter()
        .map(|v| v["gc"]["epoch"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        taken_over > before["gc"]["epoch"].as_u64().unwrap(),
        "{cut_views:?}"
    );

    sites.heal(1).unwrap();
    expect_one_holder(&fleet, &anchors, "one holder again after healing").await;
    wait_until(SETTLE, "the documents converge on both anchors", || async {
        let dirs = [fleet.nodes[0].dir.clone(), fleet.nodes[1].dir.clone()];
        let [a, b] = dirs.map(|d| {
            (
                stored(&d, "fleet", "members"),
                stored(&d, "tenant/default", "routes"),
                stored(&d, "tenant/default", "node_overrides"),
            )
        });
        a == b
    })
    .await
    .unwrap();
    let healed = duties(&fleet, &first_api).await;
    assert!(
        healed["gc"]["epoch"].as_u64().unwrap() >= taken_over,
        "the merged lease keeps the newest epoch or a later one: {healed:?}"
    );
    for api in anchors {
        assert!(cleaned(&fleet, api, &stays).await, "still clean on {api}");
    }
    let dir = fleet.nodes[0].dir.clone();
    let routes = stored(&dir, "tenant/default", "routes");
    assert!(
        !routes.contains_key("only-gone"),
        "not resurrected: {routes:?}"
    );
    assert_eq!(
        routes["mixed"]["match"]["source_node_ids"],
        json!([stays]),
        "both holders removed the same source; the merge removed it once"
    );
    let members = stored(&dir, "fleet", "members");
    assert!(
        members[&gone]["removed_at"].is_i64(),
        "{:?}",
        members[&gone]
    );
    assert!(!stored(&dir, "tenant/default", "node_overrides").contains_key(&gone));
}
