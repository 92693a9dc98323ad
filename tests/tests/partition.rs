//! Site partitions with real processes: nodes run in network namespaces ("sites", see
//! `nexus_tests::netns`) joined through a bridge, and the test cuts and heals the links between
//! sites. Needs root (`ip netns`), as CI has.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nexus_tests::netns::Sites;
use nexus_tests::{Fleet, wait_until};
use serde_json::json;

/// Offline after 2 s of silence, seen everywhere within about 0.75 s more: 20 s is generous.
const SETTLE: Duration = Duration::from_secs(20);

/// The links themselves: a cut isolates one site, a partition splits them into groups, healing
/// restores everything, and the namespaces are gone after the sites are dropped — even when the
/// test panics.
#[test]
fn sites_cut_heal_and_partition_their_links_and_clean_up() {
    let sites = Sites::create(3).expect("sites");
    let names: Vec<PathBuf> = (0..3)
        .map(|i| PathBuf::from(format!("/run/netns/{}", sites.namespace(i))))
        .collect();
    assert!(names.iter().all(|n| n.exists()), "{names:?}");
    assert_eq!(reachability(&sites), groups_of(3, &[&[0, 1, 2]]));

    sites.cut(1).unwrap();
    let mut expected = groups_of(3, &[&[0, 2], &[1]]);
    assert_eq!(reachability(&sites), expected, "site 1 cut");
    sites.heal(1).unwrap();
    assert_eq!(reachability(&sites), groups_of(3, &[&[0, 1, 2]]), "healed");

    sites.partition(&[&[0], &[1, 2]]).unwrap();
    assert_eq!(
        reachability(&sites),
        groups_of(3, &[&[0], &[1, 2]]),
        "0 | 1 2"
    );
    // A site in no group is alone.
    sites.partition(&[&[0, 2]]).unwrap();
    assert_eq!(reachability(&sites), groups_of(3, &[&[0, 2], &[1]]), "0 2");
    sites.cut(2).unwrap();
    expected = groups_of(3, &[&[0], &[1], &[2]]);
    assert_eq!(reachability(&sites), expected, "0 2, then 2 cut");
    sites.heal_all().unwrap();
    assert_eq!(
        reachability(&sites),
        groups_of(3, &[&[0, 1, 2]]),
        "healed all"
    );
    assert!(
        sites.partition(&[&[0], &[0]]).is_err(),
        "a site in two groups"
    );
    assert!(sites.partition(&[&[3]]).is_err(), "no such site");

    drop(sites);
    assert!(names.iter().all(|n| !n.exists()), "deleted: {names:?}");

    // Also when a test panics while it holds them.
    let made = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let sites = Sites::create(1).expect("sites");
        made.lock()
            .unwrap()
            .push(PathBuf::from(format!("/run/netns/{}", sites.namespace(0))));
        panic!("expected: a test fails while it holds sites");
    });
    assert!(outcome.is_err());
    let made = made.into_inner().unwrap();
    assert!(
        !made.is_empty() && made.iter().all(|n| !n.exists()),
        "{made:?}"
    );
}

/// Two sites: the anchor and a node in site 0, two nodes in site 1 (joined across the bridge). A
/// cut of site 1 makes each side see the other side offline and its own side online; healing it
/// brings all four back online everywhere.
#[tokio::test]
async fn a_cut_site_and_the_rest_see_each_other_offline_until_the_link_heals() {
    let sites = Sites::create(2).expect("sites");
    let (site0, site1) = (sites.site(0), sites.site(1));
    let started = Instant::now();
    let mut fleet = Fleet::init_in(&site0, &[]).await.expect("init");
    let token = fleet
        .token(json!({ "uses": 3, "ttl_seconds": 600 }))
        .await
        .expect("token");
    let token = token["token"].as_str().expect("token string").to_string();
    fleet.join_in(&site0, &token, &[]).await.expect("join");
    fleet.join_in(&site1, &token, &[]).await.expect("join");
    fleet.join_in(&site1, &token, &[]).await.expect("join");
    fleet.converge(4, "online", &[]).await.unwrap();
    let (_, node) = fleet
        .get(
            &fleet.anchor().api,
            &format!("/v1/nodes/{}", fleet.nodes[3].node_id),
        )
        .await
        .unwrap();
    assert_eq!(node["site"], "site-1", "{node}");
    assert!(
        fleet.nodes[3].api.contains(&sites.site_addr(1).to_string()),
        "bound to its site's address: {}",
        fleet.nodes[3].api
    );
    eprintln!("4 nodes online everywhere after {:?}", started.elapsed());

    let cut = Instant::now();
    sites.cut(1).unwrap();
    sides_see(&fleet, "site 1 cut off").await;
    eprintln!("each side saw the other offline after {:?}", cut.elapsed());
    assert!(
        fleet.nodes.iter_mut().all(|n| n.exited().is_none()),
        "every node still runs"
    );

    let healed = Instant::now();
    sites.heal(1).unwrap();
    fleet.converge(4, "online", &[]).await.unwrap();
    eprintln!(
        "4 nodes online everywhere {:?} after healing",
        healed.elapsed()
    );
}

/// Waits until every node sees the nodes of its own site online and the others offline.
async fn sides_see(fleet: &Fleet, what: &str) {
    let site_of: HashMap<String, usize> = fleet
        .nodes
        .iter()
        .map(|n| {
            (
                n.node_id.clone(),
                n.site.as_ref().expect("in a site").index(),
            )
        })
        .collect();
    let expected = |observer: usize, observed: &str| {
        if site_of[observed] == observer {
            "online"
        } else {
            "offline"
        }
    };
    let matches = || async {
        for node in &fleet.nodes {
            let observer = site_of[&node.node_id];
            let Ok(view) = fleet.statuses(&node.api).await else {
                return false;
            };
            if view.len() != site_of.len() || view.iter().any(|(id, s)| s != expected(observer, id))
            {
                return false;
            }
        }
        true
    };
    if let Err(err) = wait_until(SETTLE, what, matches).await {
        let mut views = Vec::new();
        for node in &fleet.nodes {
            views.push((node.node_id.clone(), fleet.statuses(&node.api).await.ok()));
        }
        panic!("{err:#}; sites: {site_of:?}; views: {views:?}");
    }
}

/// `reach[from][to]`: whether a TCP connection from site `from` reaches site `to`, all pairs
/// checked at once.
fn reachability(sites: &Sites) -> Vec<Vec<bool>> {
    let n = sites.len();
    std::thread::scope(|scope| {
        let checks: Vec<Vec<_>> = (0..n)
            .map(|from| {
                (0..n)
                    .map(|to| scope.spawn(move || sites.can_reach(from, to).expect("probe")))
                    .collect()
            })
            .collect();
        checks
            .into_iter()
            .map(|row| row.into_iter().map(|c| c.join().expect("probe")).collect())
            .collect()
    })
}

/// The reachability of `n` sites split into `groups`.
fn groups_of(n: usize, groups: &[&[usize]]) -> Vec<Vec<bool>> {
    let group = |i: usize| groups.iter().position(|g| g.contains(&i));
    (0..n)
        .map(|from| {
            (0..n)
                .map(|to| from == to || (group(from).is_some() && group(from) == group(to)))
                .collect()
        })
        .collect()
}

fn route(id: &str) -> serde_json::Value {
    json!({
        "id": id, "name": id, "tenant_id": "", "priority": 5,
        "match": {"source_node_ids": [], "dest_capabilities": [], "stream_modes": [], "message_types": []},
        "action": {"type": "deny"}, "enabled": true, "created_at": 0
    })
}

async fn routes_of(fleet: &Fleet, api: &str) -> Vec<String> {
    fleet
        .get(api, "/v1/routes?limit=1000")
        .await
        .ok()
        .and_then(|(_, b)| {
            b["items"].as_array().map(|items| {
                items
                    .iter()
                    .filter_map(|r| r["id"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Offline sites: both sides of a partition keep accepting writes; after the heal every node
/// holds every acknowledged write and the same document (same heads digest).
#[tokio::test]
async fn writes_on_both_sides_of_a_partition_converge_after_the_heal() {
    let sites = Sites::create(2).expect("sites");
    let (site0, site1) = (sites.site(0), sites.site(1));
    let mut fleet = Fleet::init_in(&site0, &[]).await.expect("init");
    let token = fleet
        .token(json!({ "uses": 3, "ttl_seconds": 600 }))
        .await
        .expect("token")["token"]
        .as_str()
        .expect("token string")
        .to_string();
    fleet.join_in(&site0, &token, &[]).await.expect("join");
    fleet.join_in(&site1, &token, &[]).await.expect("join");
    fleet.join_in(&site1, &token, &[]).await.expect("join");
    fleet.converge(4, "online", &[]).await.unwrap();
    // Everyone holds the fleet document (it registers the tenant) before the cut.
    let (a, b) = (fleet.nodes[1].api.clone(), fleet.nodes[2].api.clone());
    // 409: created by an earlier attempt of this loop.
    wait_until(SETTLE, "writes are accepted on both sides", || async {
        fleet
            .post_json(&a, "/v1/routes", &route("warmup-a"))
            .await
            .is_ok_and(|(s, _)| s == 201 || s == 409)
            && fleet
                .post_json(&b, "/v1/routes", &route("warmup-b"))
                .await
                .is_ok_and(|(s, _)| s == 201 || s == 409)
    })
    .await
    .unwrap();

    sites.cut(1).unwrap();
    let mut written = vec!["warmup-a".to_string(), "warmup-b".to_string()];
    for i in 0..5 {
        for (api, side) in [(&a, "a"), (&b, "b")] {
            let id = format!("{side}{i}");
            let (status, body) = fleet
                .post_json(api, "/v1/routes", &route(&id))
                .await
                .unwrap();
            assert_eq!(status, 201, "write {id} during the partition: {body}");
            written.push(id);
        }
    }
    // Each side serves its own side's writes; the other side's are cut off.
    let anchor = fleet.nodes[0].api.clone();
    wait_until(SETTLE, "site 0 holds its side's writes", || async {
        let held = routes_of(&fleet, &anchor).await;
        (0..5).all(|i| held.contains(&format!("a{i}")))
    })
    .await
    .unwrap();
    let held = routes_of(&fleet, &anchor).await;
    assert!(
        (0..5).all(|i| !held.contains(&format!("b{i}"))),
        "site 1's writes crossed a cut link: {held:?}"
    );

    sites.heal(1).unwrap();
    for node in &fleet.nodes {
        wait_until(
            SETTLE,
            "every write reaches every node after the heal",
            || async {
                let held = routes_of(&fleet, &node.api).await;
                written.iter().all(|id| held.contains(id))
            },
        )
        .await
        .unwrap();
    }
    wait_until(SETTLE, "one document everywhere (same heads)", || async {
        fleet.config_converged("tenant/default", 4).await
    })
    .await
    .unwrap();
}
