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
