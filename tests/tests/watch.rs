//! `GET /v1/watch` with real processes: a watcher on one node sees a route written on another;
//! after a disconnect, `Last-Event-ID` brings exactly the missed events, in order; an id the
//! node never issued (or issued in another run) gets a `resync`; a joining node is a `nodes`
//! event; a tenant's caller sees its tenant's objects and the fleet policies only; an unknown
//! kind is a 400 that names it.

use std::time::Duration;

use nexus_tests::{Fleet, wait_until};
use serde_json::{Value, json};

fn route(id: &str) -> Value {
    json!({
        "id": id,
        "name": format!("route {id}"),
        "tenant_id": "",
        "priority": 10,
        "match": {"source_node_ids": [], "dest_capabilities": [], "stream_modes": ["RO"], "message_types": [7]},
        "action": {"type": "allow"},
        "enabled": true,
        "created_at": 0
    })
}

/// A client for a stream: no overall timeout (the harness's client has one), optionally
/// authenticating with a node's MIC.
fn stream_client(fleet: &Fleet, mic_of: Option<&std::path::Path>) -> reqwest::Client {
    let pem = std::fs::read_to_string(fleet.anchor().dir.join("trust").join("root.pem")).unwrap();
    let root = nexus_ca::pem_to_der(&pem).unwrap().swap_remove(0);
    let credentials = mic_of.map(|dir| {
        let key = nexus_ca::NodeKey::from_pkcs8_pem(
            &std::fs::read_to_string(dir.join("node.key")).unwrap(),
        )
        .unwrap();
        let chain = std::fs::read_to_string(dir.join("node.pem")).unwrap();
        nexus_ca::Credentials::new(nexus_ca::pem_to_der(&chain).unwrap(), &key).unwrap()
    });
    reqwest::Client::builder()
        .use_preconfigured_tls(nexus_ca::api_client_config(root, credentials))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Event {
    id: Option<String>,
    event: String,
    data: Value,
}

/// An open `GET /v1/watch`, read event by event.
struct Watch {
    response: reqwest::Response,
    buffer: String,
}

impl Watch {
    async fn open(
        client: &reqwest::Client,
        bearer: Option<&str>,
        url: String,
        last_event_id: Option<&str>,
    ) -> Watch {
        let mut request = client.get(url);
        if let Some(key) = bearer {
            request = request.bearer_auth(key);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Watch {
            response,
            buffer: String::new(),
        }
    }

    /// The next event within `limit`, skipping keep-alive comments; `None` when none came.
    async fn next(&mut self, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("the stream stays readable")
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn expect(&mut self, what: &str) -> Event {
        match self.next(Duration::from_secs(20)).await {
            Some(event) => event,
            None => panic!("no event within 20 s: expected {what}"),
        }
    }
}

fn parse(block: &str) -> Option<Event> {
    let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = value.to_string(),
            "data" => data.push_str(value),
            _ => {} // a comment (keep-alive) or an unknown field
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(Event {
        id,
        event,
        data: serde_json::from_str(&data).expect("event data is JSON"),
    })
}

fn seq(id: &str) -> u64 {
    id.rsplit_once('-').unwrap().1.parse().unwrap()
}

async fn create(fleet: &Fleet, api: &str, path: &str, body: Value) {
    let (status, answer) = fleet.post_json(api, path, &body).await.unwrap();
    assert_eq!(status, 201, "POST {path}: {answer}");
}

async fn lists(fleet: &Fleet, api: &str, path: &str, id: &str) -> bool {
    fleet.get(api, path).await.is_ok_and(|(_, body)| {
        body["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["id"] == id))
    })
}

#[tokio::test]
async fn watch_resumes_resyncs_and_filters() {
    let mut fleet = Fleet::init().await.unwrap();
    let token = fleet.token(json!({})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join(&token, &[]).await.unwrap();
    fleet.converge(2, "online", &[]).await.unwrap();
    let anchor = fleet.anchor().api.clone();
    let node = fleet.nodes[1].api.clone();
    let key = fleet.admin_key.clone();
    let client = stream_client(&fleet, None);

    // --- a route written on the anchor reaches a watcher of the other node -------------------
    let url = format!("{node}/v1/watch?kinds=routes");
    let mut watch = Watch::open(&client, Some(&key), url.clone(), None).await;
    create(&fleet, &anchor, "/v1/routes", route("r1")).await;
    let first = watch.expect("r1's upsert").await;
    assert_eq!(first.event, "routes", "{first:?}");
    assert_eq!(first.data["kind"], "routes");
    assert_eq!(first.data["op"], "upsert");
    assert_eq!(first.data["id"], "r1");
    assert_eq!(first.data["tenant"], "default");
    assert_eq!(first.data["object"]["name"], "route r1");
    let last_seen = first.id.clone().expect("events carry an id");
    drop(watch);

    // --- disconnected: two more; resuming brings exactly those, in order --------------------
    create(&fleet, &anchor, "/v1/routes", route("r2")).await;
    create(&fleet, &anchor, "/v1/routes", route("r3")).await;
    wait_until(Duration::from_secs(15), "r3 reached the node", || {
        lists(&fleet, &node, "/v1/routes", "r3")
    })
    .await
    .unwrap();
    let mut watch = Watch::open(&client, Some(&key), url.clone(), Some(&last_seen)).await;
    let mut missed = Vec::new();
    while let Some(event) = watch.next(Duration::from_secs(3)).await {
        missed.push(event);
    }
    let got: Vec<(String, String)> = missed
        .iter()
        .map(|e| {
            (
                e.event.clone(),
                e.data["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("routes".to_string(), "r2".to_string()),
            ("routes".to_string(), "r3".to_string())
        ],
        "{missed:?}"
    );
    let seqs: Vec<u64> = missed
        .iter()
        .map(|e| seq(e.id.as_deref().unwrap()))
        .collect();
    assert!(seq(&last_seen) < seqs[0] && seqs[0] < seqs[1], "{seqs:?}");
    // The resumed stream goes on live.
    let deleted = client
        .delete(format!("{anchor}/v1/routes/r2"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let deleted = watch.expect("r2's delete").await;
    assert_eq!(
        (deleted.data["op"].as_str(), deleted.data["id"].as_str()),
        (Some("delete"), Some("r2"))
    );
    assert_eq!(
        deleted.data["object"]["name"], "route r2",
        "a delete carries the last state"
    );
    drop(watch);

    // --- ids the node cannot resume from: a resync first, then the stream goes on -------------
    let (epoch, n) = last_seen.split_once('-').unwrap();
    let flipped: String = epoch
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    for bogus in ["garbage".to_string(), format!("{flipped}-{n}")] {
        let mut watch = Watch::open(&client, Some(&key), url.clone(), Some(&bogus)).await;
        let resync = watch.expect("a resync").await;
        assert_eq!(resync.event, "resync", "{bogus}: {resync:?}");
        assert!(
            resync.data["reason"]
                .as_str()
                .is_some_and(|r| r.contains("re-list")),
            "{resync:?}"
        );
        // Resuming from the resync's id misses nothing after it.
        let at = resync
            .id
            .expect("a resync carries the id it continues from");
        drop(watch);
        create(
            &fleet,
            &anchor,
            "/v1/routes",
            route(&format!("after-{}", bogus.len())),
        )
        .await;
        let mut watch = Watch::open(&client, Some(&key), url.clone(), Some(&at)).await;
        let next = watch.expect("the route created after the resync").await;
        assert_eq!(next.event, "routes", "{next:?}");
        assert_eq!(next.data["id"], format!("after-{}", bogus.len()));
    }

    // --- a joining node is a nodes event; a tenant's caller sees its own only -----------------
    let mut nodes = Watch::open(
        &client,
        Some(&key),
        format!("{anchor}/v1/watch?kinds=nodes"),
        None,
    )
    .await;
    let token = fleet.token(json!({"tenant": "acme"})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let acme_dir = {
        let joined = fleet.join(&token, &[]).await.unwrap();
        joined.dir.clone()
    };
    let acme_id = fleet.nodes[2].node_id.clone();
    let appeared = loop {
        let event = nodes.expect("the joining node").await;
        assert_eq!(event.event, "nodes", "{event:?}");
        if event.data["id"] == acme_id.as_str() {
            break event;
        }
    };
    assert_eq!(appeared.data["op"], "upsert", "{appeared:?}");
    assert_eq!(appeared.data["tenant"], "acme");
    assert_eq!(appeared.data["object"]["node_id"], acme_id.as_str());
    drop(nodes);

    // The acme node's certificate, on the anchor (which holds every tenant's configuration).
    let acme_client = stream_client(&fleet, Some(&acme_dir));
    let mut acme = Watch::open(&acme_client, None, format!("{anchor}/v1/watch"), None).await;
    create(&fleet, &anchor, "/v1/routes", route("default-only")).await;
    create(
        &fleet,
        &anchor,
        "/v1/routes?tenant=acme",
        route("acme-route"),
    )
    .await;
    create(&fleet, &anchor, "/v1/fleet/policies", route("everyone")).await;
    let mut seen = Vec::new();
    loop {
        let event = acme.expect("the fleet policy").await;
        let data = &event.data;
        let fleet_wide = data["kind"] == "fleet_policies" && data["tenant"].is_null();
        assert!(
            data["tenant"] == "acme" || fleet_wide,
            "a caller of tenant acme was shown {event:?}"
        );
        seen.push((
            event.event.clone(),
            data["id"].as_str().unwrap_or("").to_string(),
        ));
        if data["id"] == "everyone" {
            break;
        }
    }
    assert!(
        seen.contains(&("routes".into(), "acme-route".into())),
        "{seen:?}"
    );
    drop(acme);

    // --- an unknown kind is refused, named, with the valid ones listed -----------------------
    let response = client
        .get(format!("{anchor}/v1/watch?kinds=routes,gadgets"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"gadgets\""), "{body}");
    for kind in [
        "nodes",
        "routes",
        "site_routes",
        "firmware",
        "tenants",
        "fleet_policies",
    ] {
        assert!(message.contains(kind), "{kind} missing from {body}");
    }
}
