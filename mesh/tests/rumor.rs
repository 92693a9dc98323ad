//! News-triggered gossip over the in-memory network. With regular rounds two minutes apart,
//! nodes that start before or after their seed still learn of each other within seconds, a
//! published key crosses the pool within seconds, and a key under a quiet prefix waits for the
//! next exchange that happens anyway.

mod common;

use std::time::{Duration, Instant};

use common::{DEADLINE, Fleet, Identity, Memory, Net, eventually, unix_ms};
use nexus_mesh::{Mesh, MeshConfig};

const NODES: usize = 6;

fn slow_rounds(c: &mut MeshConfig) {
    c.gossip_interval = Duration::from_secs(120);
    c.membership.suspect_after = Duration::from_secs(600);
    c.membership.offline_after = Duration::from_secs(1200);
    c.rumor.gap = Duration::from_millis(200);
    // Every exchange reaches the whole pool: whether news is passed on is what is tested here,
    // not how likely a smaller fanout is to reach everyone (the simulator measures that).
    c.rumor.fanout = NODES - 1;
    c.rumor.quiet.push("quiet/".to_string());
}

/// How many meshes other than `meshes[from]` see `from`'s value under `key`.
async fn holders(meshes: &[Mesh], from: usize, key: &str, value: &str) -> usize {
    let origin = meshes[from].node_id();
    let mut count = 0;
    for (i, mesh) in meshes.iter().enumerate() {
        if i != from
            && mesh
                .published(key)
                .await
                .iter()
                .any(|(node, v)| *node == origin && v == value)
        {
            count += 1;
        }
    }
    count
}

async fn until_everyone_holds(meshes: &[Mesh], from: usize, key: &str, value: &str) {
    let start = Instant::now();
    loop {
        let count = holders(meshes, from, key, value).await;
        if count == meshes.len() - 1 {
            eprintln!(
                "{:>6} ms until every node holds {key}",
                start.elapsed().as_millis()
            );
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "after {DEADLINE:?} only {count} of {} nodes hold {key}",
            meshes.len() - 1
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn news_crosses_a_pool_between_slow_rounds_and_quiet_keys_wait() {
    let _serial = common::one_cluster_at_a_time().await;
    let net = Memory::default();
    let fleet = Fleet::new("rumor.test");
    let ids: Vec<Identity> = (0..NODES).map(|_| fleet.enroll()).collect();
    let generation = unix_ms();
    // Node 1 starts before its seed (the in-memory network's next address) and finds nobody,
    // so it must ask again rather than wait two minutes for its next round.
    let early_socket = net.socket();
    let seed: std::net::SocketAddr = ([127, 0, 0, 2], 7000).into();
    let early = fleet
        .start_with(&ids[1], generation, early_socket, vec![seed], slow_rounds)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seed_socket = net.socket();
    assert_eq!(seed_socket.local_addr(), seed);
    let mut meshes = vec![
        fleet
            .start_with(&ids[0], generation, seed_socket, Vec::new(), slow_rounds)
            .await,
        early,
    ];
    for id in &ids[2..] {
        meshes.push(
            fleet
                .start_with(id, generation, net.socket(), vec![seed], slow_rounds)
                .await,
        );
    }
    {
        let meshes = &meshes;
        eventually("every node knows every other", || {
            for (i, mesh) in meshes.iter().enumerate() {
                let known = mesh.members().len();
                if known != NODES {
                    return Err(format!("node {i} knows {known} of {NODES}"));
                }
            }
            Ok(())
        })
        .await;
    }

    // A key published on the last node to start reaches everyone by news-triggered exchanges.
    let last = NODES - 1;
    meshes[last].publish("news", "one").await;
    until_everyone_holds(&meshes, last, "news", "one").await;
    // Let the tail of that wave die out: every node passes news on in a round and a follow-up,
    // 200 ms apart (generously: the machine may be busy).
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A quiet key is not news: with no exchange happening, nobody learns it.
    meshes[last].publish("quiet/digest", "q1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holders(&meshes, last, "quiet/digest", "q1").await,
        0,
        "a quiet key must not start exchanges of its own"
    );
    // The next piece of news carries it along.
    meshes[last].publish("news", "two").await;
    until_everyone_holds(&meshes, last, "news", "two").await;
    until_everyone_holds(&meshes, last, "quiet/digest", "q1").await;

    for mesh in &meshes {
        mesh.shutdown();
    }
}
