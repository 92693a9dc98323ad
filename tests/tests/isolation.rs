//! Tenant isolation (NCC-TN-001) against real processes. One anchor and two tenants, acme and
//! globex, with two nodes each, joined with join tokens their own admins created; each tenant
//! has a route (naming one of its nodes), a spare join token, API keys and a snapshot. With
//! globex's admin key, against the anchor (which holds every tenant's configuration) and against
//! one of globex's own nodes:
//!
//! - REST: acme's nodes, routes, tenant record, keys, MICs, join tokens, snapshots, audit
//!   entries and configuration document are absent from every list, and each reads as 404 (as an
//!   absent object does, so existence does not leak); writes and actions on them are 404 too and
//!   change nothing; the configuration status spreads documents over globex's nodes and the
//!   anchors only, and the transparency log's entries (every tenant's certificates) are the
//!   fleet admin's;
//! - gRPC (`nexus.v1.Nexus`): the same;
//! - watch (SSE, gRPC and `nexus watch`): changes in acme (a route, its tenant record, a key, a
//!   node drained) never reach globex's streams, while a fleet admin's stream on the same node
//!   shows them and globex's own change, journaled after them, arrives;
//! - CLI: `nexus nodes|routes|tenants|keys|config|audit|token|mics` print nothing of acme;
//! - metrics: `/metrics` names no acme tenant, node or object;
//! - replication: once the fleet converged, the SQLite files of globex's nodes (opened read-only)
//!   hold no row of acme's document, none of its signed changes, no acme token, certificate or
//!   change author, and nothing in their data directories names acme's objects.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use nexus_api::grpc::proto;
use nexus_api::grpc::proto::nexus_client::NexusClient;
use nexus_tests::{Fleet, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const ACME: &str = "acme";
const GLOBEX: &str = "globex";
/// In the names of acme's objects, so that a stray copy is found wherever it lands.
const ACME_MARK: &str = "acme-only-7f3c19d2";
/// The same for globex: what proves a search would have found something.
const GLOBEX_MARK: &str = "globex-only-5be0a441";

/// What the test knows of one tenant.
struct Tenant {
    name: &'static str,
    mark: &'static str,
    /// Id and secret of its admin key.
    key_id: String,
    key: String,
    /// Ids of its other keys.
    other_keys: Vec<String>,
    /// Its nodes: ids, data directories, API URLs.
    nodes: Vec<String>,
    dirs: Vec<PathBuf>,
    apis: Vec<String>,
    /// Its join tokens (the one its nodes joined with, a spare).
    tokens: Vec<String>,
    /// Serials of its nodes' MICs.
    serials: Vec<String>,
    /// Its route ids.
    routes: Vec<String>,
    /// Its snapshot id.
    snapshot: String,
    /// The nodes its callers may see: its own and the anchors (`GET /v1/anchors`).
    visible: BTreeSet<String>,
}

impl Tenant {
    fn new(name: &'static str, mark: &'static str) -> Tenant {
        Tenant {
            name,
            mark,
            key_id: String::new(),
            key: String::new(),
            other_keys: Vec::new(),
            nodes: Vec::new(),
            dirs: Vec::new(),
            apis: Vec::new(),
            tokens: Vec::new(),
            serials: Vec::new(),
            routes: Vec::new(),
            snapshot: String::new(),
            visible: BTreeSet::new(),
        }
    }

    fn identity(&self) -> String {
        format!("api-key:{}", self.key_id)
    }

    fn node_set(&self) -> BTreeSet<String> {
        self.nodes.iter().cloned().collect()
    }

    /// Strings naming this tenant or its objects: none may appear in what another tenant's
    /// caller is shown (its own object names and ids cannot contain them).
    fn needles(&self) -> Vec<String> {
        let mut needles = vec![
            self.name.to_string(),
            self.mark.to_string(),
            self.key_id.clone(),
            self.snapshot.clone(),
        ];
        for list in [
            &self.other_keys,
            &self.nodes,
            &self.tokens,
            &self.serials,
            &self.routes,
        ] {
            needles.extend(list.iter().cloned());
        }
        needles.retain(|n| !n.is_empty());
        needles
    }

    /// Names of this tenant's configuration objects: only holders of its document have them.
    fn document_needles(&self) -> Vec<String> {
        let mut needles = vec![self.mark.to_string(), self.snapshot.clone()];
        needles.extend(self.routes.iter().cloned());
        needles.push(self.key_id.clone());
        needles.extend(self.other_keys.iter().cloned());
        needles
    }
}

/// What globex was shown of acme's, by where: collected so that one run names every leak.
static LEAKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records a leak when `text` contains one of `needles`, naming them; the test fails at its
/// end when any was recorded ([`assert_no_leaks`]).
fn assert_absent(what: &str, text: &str, needles: &[String]) {
    let found: Vec<&String> = needles
        .iter()
        .filter(|n| text.contains(n.as_str()))
        .collect();
    if !found.is_empty() {
        // The lines that name them (a metrics page), or the start of a one-line answer.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| found.iter().any(|n| l.contains(n.as_str())))
            .take(20)
            .collect();
        let shown: String = lines.join("\n").chars().take(3000).collect();
        LEAKS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{what} shows acme's {found:?}: {shown}"));
    }
}

/// Records a leak when a configuration status spreads a document over nodes the caller may not
/// see, or counts more nodes than it names.
fn check_spread(what: &str, status: &Value, visible: &BTreeSet<String>) {
    for document in status["documents"].as_array().into_iter().flatten() {
        for state in document["states"].as_array().into_iter().flatten() {
            let ids: Vec<&str> = state["node_ids"]
                .as_array()
                .map(|ids| ids.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let hidden: Vec<&&str> = ids.iter().filter(|id| !visible.contains(**id)).collect();
            if !hidden.is_empty() || state["nodes"] != ids.len() {
                LEAKS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(format!(
                        "{what} spreads {} over nodes globex may not see {hidden:?}: {state}",
                        document["document"]
                    ));
            }
        }
    }
}

#[track_caller]
fn assert_no_leaks() {
    let leaks = LEAKS.lock().unwrap_or_else(PoisonError::into_inner);
    assert!(
        leaks.is_empty(),
        "{} isolation leak(s):\n{}",
        leaks.len(),
        leaks.join("\n\n")
    );
}

/// `value` as text without certificates (random base64 could spell anything).
fn scrubbed(value: &Value) -> String {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for field in ["certificate_pem", "certificate_der", "leaf"] {
                    map.remove(field);
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = value.clone();
    strip(&mut value);
    value.to_string()
}

/// The `field` of every item of a page.
fn ids(page: &Value, field: &str) -> BTreeSet<String> {
    page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i[field].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

fn route(id: &str, name: &str, source: &str, priority: u32) -> Value {
    json!({
        "id": id, "name": name, "tenant_id": "", "priority": priority,
        "match": {"source_node_ids": [source], "dest_capabilities": [], "stream_modes": ["RO"], "message_types": [7]},
        "action": {"type": "allow"}, "enabled": true, "created_at": 0
    })
}

/// One answer of the REST API.
struct Answer {
    status: u16,
    body: Value,
    text: String,
}

/// The REST API of every node of the fleet (they share the fleet root), with any key.
struct Api {
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        key: &str,
        method: Method,
        base: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn get(&self, key: &str, base: &str, path: &str) -> Answer {
        self.call(key, Method::GET, base, path, None).await
    }

    /// A call that must answer `want`.
    async fn expect(
        &self,
        key: &str,
        method: Method,
        base: &str,
        path: &str,
        body: Option<&Value>,
        want: u16,
    ) -> Answer {
        let answer = self.call(key, method.clone(), base, path, body).await;
        assert_eq!(
            answer.status, want,
            "{method} {base}{path} answered {}: {}",
            answer.status, answer.text
        );
        answer
    }

    /// A call that must be refused as absent: 404 `not_found`.
    async fn absent(
        &self,
        key: &str,
        method: Method,
        base: &str,
        path: &str,
        body: Option<&Value>,
    ) {
        let answer = self.expect(key, method, base, path, body, 404).await;
        assert_eq!(
            answer.body["error"]["code"], "not_found",
            "{path}: {}",
            answer.text
        );
    }
}

async fn create_key(api: &Api, base: &str, by: &str, body: Value) -> (String, String) {
    let created = api
        .expect(by, Method::POST, base, "/v1/keys", Some(&body), 201)
        .await
        .body;
    (
        created["key"]["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_is_invisible_to_every_other_tenant() {
    let started = Instant::now();
    let mut fleet = Fleet::init().await.unwrap();
    let anchor = fleet.anchor().api.clone();
    let anchor_dir = fleet.anchor().dir.clone();
    let api = Api {
        http: nexus_tests::api_client(&anchor_dir).unwrap(),
    };
    let root = fleet.admin_key.clone();
    let mut acme = Tenant::new(ACME, ACME_MARK);
    let mut globex = Tenant::new(GLOBEX, GLOBEX_MARK);

    // --- the fleet: two tenants, each with its admin key, join tokens and two nodes ----------
    let mut join_tokens = Vec::new();
    for t in [&mut acme, &mut globex] {
        api.expect(
            &root,
            Method::POST,
            &anchor,
            "/v1/tenants",
            Some(&json!({"id": t.name, "name": t.name})),
            201,
        )
        .await;
        let body = json!({"name": format!("admin {}", t.mark), "role": "admin", "tenant": t.name});
        (t.key_id, t.key) = create_key(&api, &anchor, &root, body).await;
        // A tenant's admin creates join tokens of its own tenant.
        let created = api
            .expect(
                &t.key,
                Method::POST,
                &anchor,
                "/v1/tokens",
                Some(&json!({"uses": 2})),
                201,
            )
            .await
            .body;
        assert_eq!(created["tenant"], t.name, "{created}");
        t.tokens.push(created["id"].as_str().unwrap().to_string());
        join_tokens.push(created["token"].as_str().unwrap().to_string());
    }
    for (t, token) in [&mut acme, &mut globex].into_iter().zip(&join_tokens) {
        for _ in 0..2 {
            let node = fleet.join(token, &[]).await.unwrap();
            t.nodes.push(node.node_id.clone());
            t.dirs.push(node.dir.clone());
            t.apis.push(node.api.clone());
        }
        let spare = api
            .expect(
                &t.key,
                Method::POST,
                &anchor,
                "/v1/tokens",
                Some(&json!({"ttl_seconds": 600})),
                201,
            )
            .await
            .body;
        t.tokens.push(spare["id"].as_str().unwrap().to_string());
    }
    fleet.converge(5, "online", &[]).await.unwrap();
    // A tenant's key works on its own nodes once its document is there.
    for t in [&acme, &globex] {
        for base in &t.apis {
            wait_until(
                Duration::from_secs(20),
                "a tenant's key works on its nodes",
                || async { api.get(&t.key, base, "/v1/whoami").await.status == 200 },
            )
            .await
            .unwrap();
        }
    }
    // Routes naming their own tenant's node: acme's written on the anchor, globex's on its node.
    acme.routes.push("acme-route-7f3c19".into());
    let body = route(
        &acme.routes[0],
        &format!("route {ACME_MARK}"),
        &acme.nodes[0],
        10,
    );
    let path = format!("/v1/routes/{}", acme.routes[0]);
    api.expect(&acme.key, Method::PUT, &anchor, &path, Some(&body), 201)
        .await;
    globex.routes.push("globex-route-5be0a4".into());
    let body = route(
        &globex.routes[0],
        &format!("route {GLOBEX_MARK}"),
        &globex.nodes[0],
        10,
    );
    let path = format!("/v1/routes/{}", globex.routes[0]);
    wait_until(
        Duration::from_secs(20),
        "globex's node takes globex's route",
        || async {
            let answer = api
                .call(
                    &globex.key,
                    Method::PUT,
                    &globex.apis[0],
                    &path,
                    Some(&body),
                )
                .await;
            matches!(answer.status, 200 | 201)
        },
    )
    .await
    .unwrap();
    for t in [&mut acme, &mut globex] {
        let body = json!({"name": format!("snapshot {}", t.mark), "document": format!("tenant/{}", t.name)});
        let snapshot = api
            .expect(
                &t.key,
                Method::POST,
                &anchor,
                "/v1/config/snapshots",
                Some(&body),
                201,
            )
            .await
            .body;
        t.snapshot = snapshot["id"].as_str().unwrap().to_string();
        for id in t.nodes.clone() {
            let page = api
                .expect(
                    &root,
                    Method::GET,
                    &anchor,
                    &format!("/v1/mics?node_id={id}"),
                    None,
                    200,
                )
                .await
                .body;
            let serials = ids(&page, "serial");
            assert!(!serials.is_empty(), "{page}");
            t.serials.extend(serials);
        }
    }
    wait_until(
        Duration::from_secs(30),
        "each document converged on its holders",
        || async {
            fleet.config_converged("fleet", 5).await
                && fleet.config_converged("tenant/acme", 3).await
                && fleet.config_converged("tenant/globex", 3).await
        },
    )
    .await
    .unwrap();
    for t in [&acme, &globex] {
        let path = format!("/v1/routes/{}", t.routes[0]);
        for base in t.apis.iter().chain([&anchor]) {
            wait_until(
                Duration::from_secs(20),
                "a tenant's route is on its holders",
                || async { api.get(&t.key, base, &path).await.status == 200 },
            )
            .await
            .unwrap();
        }
    }
    let acme_needles = acme.needles();
    let anchors = api
        .expect(&globex.key, Method::GET, &anchor, "/v1/anchors", None, 200)
        .await
        .body;
    assert_eq!(
        ids(&anchors, "node_id"),
        set(&[fleet.anchor().node_id.clone()]),
        "{anchors}"
    );
    globex.visible = globex.node_set();
    globex.visible.insert(fleet.anchor().node_id.clone());
    eprintln!("fleet ready after {:?}", started.elapsed());

    // --- audit, before globex names anything of acme's ----------------------------------------
    audit_isolation(&api, &root, &anchor, &acme, &globex).await;

    // --- REST, on the anchor and on globex's node --------------------------------------------
    rest_isolation(&api, &root, &anchor, true, &acme, &globex).await;
    rest_isolation(&api, &root, &globex.apis[0], false, &acme, &globex).await;
    // Nothing globex tried changed anything of acme's.
    acme_intact(&api, &root, &anchor, &acme).await;

    // --- gRPC ----------------------------------------------------------------------------
    grpc_isolation(&anchor_dir, &anchor, &acme, &globex).await;
    grpc_isolation(&anchor_dir, &globex.apis[0], &acme, &globex).await;
    acme_intact(&api, &root, &anchor, &acme).await;

    // --- CLI -----------------------------------------------------------------------------
    let cli_config = fleet.root.path().join("cli").join("config.toml");
    let ca = anchor_dir.join("trust").join("root.pem");
    let cli_anchor = Cli::new(&anchor, &ca, &globex.key, &cli_config);
    let cli_node = Cli::new(&globex.apis[0], &ca, &globex.key, &cli_config);
    cli_isolation(&cli_anchor, true, &acme, &globex);
    cli_isolation(&cli_node, false, &acme, &globex);

    // --- metrics -------------------------------------------------------------------------
    for base in [&anchor, &globex.apis[0]] {
        for key in [None, Some(&globex.key)] {
            let mut request = api.http.get(format!("{base}/metrics"));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let text = response.text().await.unwrap();
            assert!(text.contains("nexus_"), "{text}");
            assert_absent(&format!("GET {base}/metrics"), &text, &acme_needles);
        }
    }

    // --- watch ---------------------------------------------------------------------------
    watch_isolation(
        &api,
        &root,
        &anchor_dir,
        &anchor,
        &cli_node,
        &mut acme,
        &mut globex,
    )
    .await;

    // --- replication: globex's nodes never hold acme's document -------------------------------
    for t in [&acme, &globex] {
        for (i, id) in t.routes.iter().enumerate() {
            let path = format!("/v1/routes/{id}");
            for base in &t.apis {
                wait_until(
                    Duration::from_secs(20),
                    "a tenant's latest routes are on its nodes",
                    || async { api.get(&t.key, base, &path).await.status == 200 },
                )
                .await
                .unwrap_or_else(|e| panic!("route {i} of {}: {e}", t.name));
            }
        }
    }
    wait_until(
        Duration::from_secs(30),
        "each document converged again on its holders",
        || async {
            fleet.config_converged("fleet", 5).await
                && fleet.config_converged("tenant/acme", 3).await
                && fleet.config_converged("tenant/globex", 3).await
        },
    )
    .await
    .unwrap();
    replication_isolation(&anchor_dir, &acme, &globex);
    eprintln!("checked in {:?}", started.elapsed());
    assert_no_leaks();
}

/// The audit log: globex's admin reads its own tenant's entries only, on the anchor (which holds
/// everyone's) and on its node.
async fn audit_isolation(api: &Api, root: &str, anchor: &str, acme: &Tenant, globex: &Tenant) {
    // Each tenant's calls on its own node reach the anchor's log.
    for t in [acme, globex] {
        api.expect(&t.key, Method::GET, &t.apis[0], "/v1/nodes", None, 200)
            .await;
        let path = format!("/v1/audit?tenant={}&node={}&limit=1000", t.name, t.nodes[0]);
        let identity = t.identity();
        wait_until(
            Duration::from_secs(20),
            "a node's audit entries reach the anchor",
            || async {
                api.get(root, anchor, &path).await.body["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|e| e["identity"] == identity.as_str()))
            },
        )
        .await
        .unwrap();
    }
    let acme_log = api
        .expect(
            root,
            Method::GET,
            anchor,
            "/v1/audit?tenant=acme&limit=1000",
            None,
            200,
        )
        .await
        .body;
    let acme_route = format!("/v1/routes/{}", acme.routes[0]);
    assert!(
        acme_log["items"].as_array().unwrap().iter().any(|e| {
            e["target"] == acme_route.as_str() && e["identity"] == acme.identity().as_str()
        }),
        "the fleet admin sees acme's route write: {acme_log}"
    );
    // acme's key means nothing on globex's nodes: they never received acme's document.
    let refused = api
        .expect(
            &acme.key,
            Method::GET,
            &globex.apis[0],
            "/v1/whoami",
            None,
            401,
        )
        .await;
    assert_eq!(
        refused.body["error"]["code"], "unauthenticated",
        "{}",
        refused.text
    );

    let needles = acme.needles();
    for (base, own_node) in [
        (anchor, &globex.nodes[0]),
        (globex.apis[0].as_str(), &globex.nodes[0]),
    ] {
        let log = api
            .expect(
                &globex.key,
                Method::GET,
                base,
                "/v1/audit?limit=1000",
                None,
                200,
            )
            .await;
        let items = log.body["items"].as_array().unwrap();
        assert!(
            items.iter().any(|e| e["node_id"] == own_node.as_str()),
            "globex sees its own calls: {}",
            log.text
        );
        for entry in items {
            assert_eq!(entry["tenant"], GLOBEX, "{base}: {entry}");
            assert_ne!(entry["identity"], acme.identity().as_str(), "{entry}");
            assert!(
                !acme.nodes.iter().any(|n| entry["node_id"] == n.as_str()),
                "{entry}"
            );
        }
        assert_absent(&format!("GET {base}/v1/audit"), &log.text, &needles);
        api.absent(
            &globex.key,
            Method::GET,
            base,
            "/v1/audit?tenant=acme",
            None,
        )
        .await;
        let by_node = api
            .expect(
                &globex.key,
                Method::GET,
                base,
                &format!("/v1/audit?node={}&limit=1000", acme.nodes[0]),
                None,
                200,
            )
            .await
            .body;
        assert_eq!(by_node["items"], json!([]), "{by_node}");
    }
}

/// REST with globex's admin key against `base`.
async fn rest_isolation(
    api: &Api,
    root: &str,
    base: &str,
    on_anchor: bool,
    acme: &Tenant,
    globex: &Tenant,
) {
    let key = &globex.key;
    let needles = acme.needles();
    let me = api
        .expect(key, Method::GET, base, "/v1/whoami", None, 200)
        .await
        .body;
    assert_eq!(me["tenant"], GLOBEX, "{me}");
    assert_eq!(me["role"], "admin", "{me}");

    // Nodes: the fleet admin sees acme's here, globex's admin does not.
    let all = api
        .expect(root, Method::GET, base, "/v1/nodes?limit=1000", None, 200)
        .await
        .body;
    assert!(
        ids(&all, "node_id").is_superset(&acme.node_set()),
        "{base} knows acme's nodes: {all}"
    );
    let nodes = api
        .expect(key, Method::GET, base, "/v1/nodes?limit=1000", None, 200)
        .await;
    assert_eq!(
        ids(&nodes.body, "node_id"),
        globex.node_set(),
        "{}",
        nodes.text
    );
    assert_absent(&format!("GET {base}/v1/nodes"), &nodes.text, &needles);
    let filtered = api
        .expect(key, Method::GET, base, "/v1/nodes?tenant=acme", None, 200)
        .await
        .body;
    assert_eq!(filtered["items"], json!([]), "{filtered}");
    api.expect(
        key,
        Method::GET,
        base,
        &format!("/v1/nodes/{}", globex.nodes[0]),
        None,
        200,
    )
    .await;
    for id in &acme.nodes {
        api.absent(key, Method::GET, base, &format!("/v1/nodes/{id}"), None)
            .await;
        for action in ["drain", "decommission"] {
            let path = format!("/v1/nodes/{id}/{action}");
            api.absent(key, Method::POST, base, &path, None).await;
        }
        let labels = json!({"labels": {"owner": "globex"}});
        let path = format!("/v1/nodes/{id}/labels");
        api.absent(key, Method::PATCH, base, &path, Some(&labels))
            .await;
    }

    // Routes: globex's own only; acme's document reads as absent, by id or by tenant.
    let routes = api
        .expect(key, Method::GET, base, "/v1/routes?limit=1000", None, 200)
        .await;
    // globex's routes, and the tenant's default policies (the same ids in every tenant).
    assert!(
        ids(&routes.body, "id").is_superset(&set(&globex.routes)),
        "{}",
        routes.text
    );
    for r in routes.body["items"].as_array().unwrap() {
        assert_eq!(r["tenant_id"], GLOBEX, "{r}");
    }
    assert_absent(&format!("GET {base}/v1/routes"), &routes.text, &needles);
    api.absent(key, Method::GET, base, "/v1/routes?tenant=acme", None)
        .await;
    let intrusion = route("intrusion", "intrusion", &globex.nodes[0], 1);
    for id in &acme.routes {
        for path in [
            format!("/v1/routes/{id}"),
            format!("/v1/routes/{id}?tenant=acme"),
        ] {
            api.absent(key, Method::GET, base, &path, None).await;
        }
        let path = format!("/v1/routes/{id}?tenant=acme");
        api.absent(key, Method::DELETE, base, &path, None).await;
        api.absent(
            key,
            Method::PATCH,
            base,
            &path,
            Some(&json!({"priority": 999})),
        )
        .await;
    }
    api.absent(
        key,
        Method::PUT,
        base,
        "/v1/routes/intrusion?tenant=acme",
        Some(&intrusion),
    )
    .await;
    api.absent(
        key,
        Method::GET,
        base,
        "/v1/sites/hq/routes?tenant=acme",
        None,
    )
    .await;

    // Tenants: its own record only.
    let tenants = api
        .expect(key, Method::GET, base, "/v1/tenants", None, 200)
        .await;
    assert_eq!(
        ids(&tenants.body, "id"),
        set(&[GLOBEX.to_string()]),
        "{}",
        tenants.text
    );
    for path in ["/v1/tenants/acme", "/v1/tenants/acme/oidc"] {
        api.absent(key, Method::GET, base, path, None).await;
    }

    // API keys: globex's own; acme's are absent.
    let keys = api
        .expect(key, Method::GET, base, "/v1/keys?limit=1000", None, 200)
        .await;
    assert!(
        ids(&keys.body, "id").contains(&globex.key_id),
        "{}",
        keys.text
    );
    for k in keys.body["items"].as_array().unwrap() {
        assert_eq!(k["tenant"], GLOBEX, "{k}");
    }
    assert_absent(&format!("GET {base}/v1/keys"), &keys.text, &needles);
    api.absent(key, Method::GET, base, "/v1/keys?tenant=acme", None)
        .await;
    let path = format!("/v1/keys/{}", acme.key_id);
    api.absent(key, Method::GET, base, &path, None).await;
    api.absent(key, Method::DELETE, base, &path, None).await;
    let foreign = json!({"name": "intrusion", "role": "admin", "tenant": "acme"});
    api.absent(key, Method::POST, base, "/v1/keys", Some(&foreign))
        .await;

    // Snapshots: globex's own; acme's are absent and cannot be rolled back.
    let snapshots = api
        .expect(key, Method::GET, base, "/v1/config/snapshots", None, 200)
        .await;
    assert!(
        snapshots.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == globex.snapshot.as_str()),
        "{}",
        snapshots.text
    );
    assert_absent(
        &format!("GET {base}/v1/config/snapshots"),
        &snapshots.text,
        &needles,
    );
    // Asking for acme's document answers as for a tenant that never existed.
    let only_acme = api
        .get(key, base, "/v1/config/snapshots?document=tenant/acme")
        .await;
    let never = api
        .get(
            key,
            base,
            "/v1/config/snapshots?document=tenant/never-existed",
        )
        .await;
    assert_eq!(
        (only_acme.status, &only_acme.body["error"]["code"]),
        (never.status, &never.body["error"]["code"]),
        "{base}: acme's document {} / a tenant that never existed {}",
        only_acme.text,
        never.text
    );
    let path = format!("/v1/config/snapshots/{}", acme.snapshot);
    api.absent(key, Method::GET, base, &path, None).await;
    api.absent(key, Method::POST, base, &format!("{path}/rollback"), None)
        .await;

    // The configuration status: the fleet document and globex's own.
    let status = api
        .expect(key, Method::GET, base, "/v1/config/status", None, 200)
        .await;
    for list in ["documents", "local"] {
        let docs: BTreeSet<String> = status.body[list]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["document"].as_str().map(str::to_string))
            .collect();
        assert!(docs.contains("tenant/globex"), "{list}: {}", status.text);
        assert!(
            docs.iter().all(|d| d == "fleet" || d == "tenant/globex"),
            "{list}: {}",
            status.text
        );
    }
    assert_absent(
        &format!("GET {base}/v1/config/status"),
        &status.text,
        &needles,
    );
    check_spread(
        &format!("GET {base}/v1/config/status"),
        &status.body,
        &globex.visible,
    );

    // Fleet-wide reads name nothing of acme's.
    for path in [
        "/v1/fleet/policies",
        "/v1/fleet/settings",
        "/v1/firmware/targets",
        "/v1/sites/hq/routes",
        "/v1/anchors",
    ] {
        let answer = api.expect(key, Method::GET, base, path, None, 200).await;
        assert_absent(&format!("GET {base}{path}"), &answer.text, &needles);
    }

    if on_anchor {
        // MICs: those of globex's nodes; acme's are absent and cannot be revoked.
        let mics = api
            .expect(key, Method::GET, base, "/v1/mics?limit=1000", None, 200)
            .await;
        assert_eq!(
            ids(&mics.body, "serial"),
            set(&globex.serials),
            "{}",
            mics.text
        );
        assert_absent(
            &format!("GET {base}/v1/mics"),
            &scrubbed(&mics.body),
            &needles,
        );
        let by_node = api
            .expect(
                key,
                Method::GET,
                base,
                &format!("/v1/mics?node_id={}", acme.nodes[0]),
                None,
                200,
            )
            .await
            .body;
        assert_eq!(by_node["items"], json!([]), "{by_node}");
        for serial in &acme.serials {
            let path = format!("/v1/mics/{serial}");
            api.absent(key, Method::GET, base, &path, None).await;
            let path = format!("/v1/mics/{serial}/revoke");
            api.absent(key, Method::POST, base, &path, None).await;
        }
        // Join tokens: globex's; acme's are absent and cannot be revoked.
        let tokens = api
            .expect(key, Method::GET, base, "/v1/tokens?limit=1000", None, 200)
            .await;
        assert_eq!(
            ids(&tokens.body, "id"),
            set(&globex.tokens),
            "{}",
            tokens.text
        );
        assert_absent(&format!("GET {base}/v1/tokens"), &tokens.text, &needles);
        for id in &acme.tokens {
            let path = format!("/v1/tokens/{id}");
            api.absent(key, Method::DELETE, base, &path, None).await;
        }
        let foreign = json!({"tenant": "acme"});
        let refused = api
            .expect(key, Method::POST, base, "/v1/tokens", Some(&foreign), 403)
            .await;
        assert_eq!(
            refused.body["error"]["code"], "forbidden",
            "{}",
            refused.text
        );
        // The transparency log lists every tenant's certificates: not for a tenant's caller.
        let log = api
            .call(
                key,
                Method::GET,
                base,
                "/v1/transparency/entries?start=0&end=1000",
                None,
            )
            .await;
        assert_eq!(log.status, 403, "{}", log.text);
        for serial in &acme.serials {
            let path = format!("/v1/transparency/entries?serial={serial}");
            let answer = api.call(key, Method::GET, base, &path, None).await;
            assert_eq!(answer.status, 403, "{path}: {}", answer.text);
        }
    } else {
        // globex's node is not an anchor: certificates and join tokens are the anchors'.
        let mics = api
            .expect(key, Method::GET, base, "/v1/mics", None, 421)
            .await;
        assert_eq!(mics.body["error"]["code"], "not_an_anchor", "{}", mics.text);
        assert_absent(&format!("GET {base}/v1/mics"), &mics.text, &needles);
        let tokens = api
            .expect(key, Method::GET, base, "/v1/tokens", None, 409)
            .await;
        assert_absent(&format!("GET {base}/v1/tokens"), &tokens.text, &needles);
    }
}

/// acme's objects are as they were: globex's attempts changed nothing.
async fn acme_intact(api: &Api, root: &str, anchor: &str, acme: &Tenant) {
    for id in &acme.routes {
        let path = format!("/v1/routes/{id}?tenant=acme");
        let got = api
            .expect(root, Method::GET, anchor, &path, None, 200)
            .await;
        assert_eq!(got.body["priority"], 10, "{}", got.text);
    }
    for id in &acme.nodes {
        let node = api
            .expect(
                root,
                Method::GET,
                anchor,
                &format!("/v1/nodes/{id}"),
                None,
                200,
            )
            .await
            .body;
        assert_eq!(node["status"], "online", "{node}");
        assert!(node["labels"].get("owner").is_none(), "{node}");
    }
    let mics = api
        .expect(root, Method::GET, anchor, "/v1/mics?limit=1000", None, 200)
        .await
        .body;
    for mic in mics["items"].as_array().unwrap() {
        if acme.serials.iter().any(|s| mic["serial"] == s.as_str()) {
            assert!(mic["revoked_at"].is_null(), "{mic}");
        }
    }
    let tokens = api
        .expect(
            root,
            Method::GET,
            anchor,
            "/v1/tokens?limit=1000",
            None,
            200,
        )
        .await
        .body;
    let spare = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == acme.tokens[1].as_str())
        .cloned()
        .unwrap_or_else(|| panic!("acme's spare token is listed: {tokens}"));
    assert_eq!(spare["state"], "active", "{spare}");
    api.expect(&acme.key, Method::GET, anchor, "/v1/whoami", None, 200)
        .await;
    let tenants = api
        .expect(root, Method::GET, anchor, "/v1/tenants", None, 200)
        .await
        .body;
    assert!(ids(&tenants, "id").contains(ACME), "{tenants}");
}

/// A channel to the HTTPS API at `base` (trusting the fleet root in `root_dir`), ALPN `h2`.
async fn tls_channel(root_dir: &Path, base: &str) -> Channel {
    let pem = std::fs::read_to_string(root_dir.join("trust").join("root.pem")).unwrap();
    let root = nexus_ca::pem_to_der(&pem).unwrap().swap_remove(0);
    let mut tls = nexus_ca::api_client_config(root, None);
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let addr = base
        .strip_prefix("https://")
        .expect("the node serves HTTPS")
        .to_string();
    Endpoint::from_shared(base.to_string())
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, addr) = (connector.clone(), addr.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(
                    addr.parse::<std::net::SocketAddr>().unwrap().ip().into(),
                );
                let stream = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

fn authorized<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn struct_json(object: prost_types::Struct) -> Value {
    nexus_api::grpc::struct_to_json(object, "object").unwrap()
}

#[track_caller]
fn not_found<T: std::fmt::Debug>(what: &str, result: Result<tonic::Response<T>, tonic::Status>) {
    match result {
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}"),
        Ok(answer) => panic!("{what} answered {answer:?}"),
    }
}

/// gRPC with globex's admin key against `base`.
async fn grpc_isolation(root_dir: &Path, base: &str, acme: &Tenant, globex: &Tenant) {
    let mut nexus = NexusClient::new(tls_channel(root_dir, base).await);
    let key = &globex.key;
    let needles = acme.needles();
    let me = nexus
        .who_am_i(authorized(proto::WhoAmIRequest {}, key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.tenant.as_deref(), Some(GLOBEX), "{me:?}");

    let nodes = nexus
        .list_nodes(authorized(
            proto::ListNodesRequest {
                limit: 1000,
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    let seen: BTreeSet<String> = nodes.nodes.iter().map(|n| n.node_id.clone()).collect();
    assert_eq!(seen, globex.node_set(), "{base}: {nodes:?}");
    assert_absent(
        &format!("{base} ListNodes"),
        &format!("{nodes:?}"),
        &needles,
    );
    for id in &acme.nodes {
        let request = proto::GetNodeRequest {
            node_id: id.clone(),
        };
        not_found(
            &format!("{base} GetNode {id}"),
            nexus.get_node(authorized(request, key)).await,
        );
    }
    let own = nexus
        .get_node(authorized(
            proto::GetNodeRequest {
                node_id: globex.nodes[0].clone(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.tenant_id, GLOBEX);

    let routes = nexus
        .list_routes(authorized(
            proto::ListRoutesRequest {
                limit: 1000,
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    let text = format!("{routes:?}");
    let routes: Vec<Value> = routes.routes.into_iter().map(struct_json).collect();
    let route_ids: BTreeSet<String> = routes
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        route_ids.is_superset(&set(&globex.routes)),
        "{base}: {text}"
    );
    for r in &routes {
        assert_eq!(r["tenant_id"], GLOBEX, "{base}: {r}");
    }
    assert_absent(&format!("{base} ListRoutes"), &text, &needles);
    let request = proto::ListRoutesRequest {
        tenant: ACME.into(),
        limit: 1000,
        ..Default::default()
    };
    not_found(
        &format!("{base} ListRoutes tenant=acme"),
        nexus.list_routes(authorized(request, key)).await,
    );
    for id in &acme.routes {
        for tenant in ["", ACME] {
            let request = proto::GetRouteRequest {
                tenant: tenant.into(),
                id: id.clone(),
            };
            not_found(
                &format!("{base} GetRoute {tenant}/{id}"),
                nexus.get_route(authorized(request, key)).await,
            );
            let request = proto::DeleteRouteRequest {
                tenant: tenant.into(),
                id: id.clone(),
            };
            not_found(
                &format!("{base} DeleteRoute {tenant}/{id}"),
                nexus.delete_route(authorized(request, key)).await,
            );
        }
    }
    let request = proto::PutRouteRequest {
        tenant: ACME.into(),
        id: "intrusion".into(),
        route: Some(nexus_api::grpc::json_to_struct(route(
            "intrusion",
            "intrusion",
            &globex.nodes[0],
            1,
        ))),
    };
    not_found(
        &format!("{base} PutRoute acme/intrusion"),
        nexus.put_route(authorized(request, key)).await,
    );

    let tenants = nexus
        .list_tenants(authorized(proto::ListTenantsRequest::default(), key))
        .await
        .unwrap()
        .into_inner();
    let text = format!("{tenants:?}");
    let tenant_ids: BTreeSet<String> = tenants
        .tenants
        .into_iter()
        .map(|t| {
            struct_json(t)["id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(tenant_ids, set(&[GLOBEX.to_string()]), "{base}: {text}");
    assert_absent(&format!("{base} ListTenants"), &text, &needles);
    let request = proto::GetTenantRequest { id: ACME.into() };
    not_found(
        &format!("{base} GetTenant acme"),
        nexus.get_tenant(authorized(request, key)).await,
    );

    let status = nexus
        .get_config_status(authorized(proto::GetConfigStatusRequest {}, key))
        .await
        .unwrap()
        .into_inner();
    let status = struct_json(status.status.unwrap());
    let docs: BTreeSet<String> = status["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["document"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        docs,
        set(&["fleet".into(), "tenant/globex".into()]),
        "{base}: {status}"
    );
    assert_absent(
        &format!("{base} GetConfigStatus"),
        &status.to_string(),
        &needles,
    );
    check_spread(&format!("{base} GetConfigStatus"), &status, &globex.visible);
}

/// The `nexus` CLI against one node, with globex's key, isolated from any profile file.
struct Cli {
    base: String,
    ca: PathBuf,
    key: String,
    config: PathBuf,
}

impl Cli {
    fn new(base: &str, ca: &Path, key: &str, config: &Path) -> Cli {
        Cli {
            base: base.to_string(),
            ca: ca.to_path_buf(),
            key: key.to_string(),
            config: config.to_path_buf(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = nexus_tests::nexus();
        cmd.env("NEXUS_CLI_CONFIG", &self.config)
            .env_remove("NEXUS_API")
            .env_remove("NEXUS_PROFILE")
            .env_remove("NEXUS_API_KEY_FILE")
            .env_remove("NEXUS_CA_FILE")
            .env_remove("NEXUS_CLIENT_CERT")
            .env_remove("NEXUS_CLIENT_KEY")
            .stdin(Stdio::null())
            .args(args)
            .args(["--api", &self.base, "--key", &self.key])
            .arg("--ca-file")
            .arg(&self.ca);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn nexus")
    }

    /// stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nexus {args:?} against {} failed: {}",
            self.base,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// stderr of a command that must fail with exit code 1, after checking it printed nothing.
    fn fails(&self, args: &[&str], expect: &str) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(1),
            "nexus {args:?} against {} must fail: {stderr}",
            self.base
        );
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in {stderr}"
        );
        stderr
    }
}

/// Ids of the JSON list a CLI command printed.
fn listed(value: &Value, field: &str) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .filter_map(|i| i[field].as_str().map(str::to_string))
        .collect()
}

fn cli_isolation(cli: &Cli, on_anchor: bool, acme: &Tenant, globex: &Tenant) {
    let needles = acme.needles();
    let what = |args: &str| format!("nexus {args} against {}", cli.base);

    let table = cli.ok(&["nodes", "list"]);
    for id in &globex.nodes {
        assert!(table.contains(id.as_str()), "{table}");
    }
    assert_absent(&what("nodes list"), &table, &needles);
    let nodes = cli.json(&["nodes", "list"]);
    assert_eq!(listed(&nodes, "node_id"), globex.node_set(), "{nodes}");
    cli.fails(&["nodes", "get", &acme.nodes[0]], "not_found");

    let table = cli.ok(&["routes", "list"]);
    assert!(table.contains(globex.routes[0].as_str()), "{table}");
    assert_absent(&what("routes list"), &table, &needles);
    let routes = cli.json(&["routes", "list"]);
    assert!(
        listed(&routes, "id").is_superset(&set(&globex.routes)),
        "{routes}"
    );
    for r in routes.as_array().unwrap() {
        assert_eq!(r["tenant_id"], GLOBEX, "{r}");
    }
    cli.fails(&["routes", "list", "--tenant", ACME], "not_found");
    cli.fails(&["routes", "get", &acme.routes[0]], "not_found");
    cli.fails(
        &["routes", "get", &acme.routes[0], "--tenant", ACME],
        "not_found",
    );

    let table = cli.ok(&["tenants", "list"]);
    assert!(table.contains(GLOBEX), "{table}");
    assert_absent(&what("tenants list"), &table, &needles);
    cli.fails(&["tenants", "get", ACME], "not_found");

    let table = cli.ok(&["keys", "list"]);
    assert!(table.contains(globex.key_id.as_str()), "{table}");
    assert_absent(&what("keys list"), &table, &needles);
    cli.fails(&["keys", "get", &acme.key_id], "not_found");

    let table = cli.ok(&["config", "snapshots", "list"]);
    assert!(table.contains(globex.snapshot.as_str()), "{table}");
    assert_absent(&what("config snapshots list"), &table, &needles);
    let status = cli.json(&["config", "status"]);
    assert_absent(&what("config status"), &status.to_string(), &needles);
    check_spread(&what("config status"), &status, &globex.visible);

    let audit = cli.json(&["audit", "--limit", "1000"]);
    let entries = audit.as_array().unwrap();
    assert!(!entries.is_empty(), "{audit}");
    for entry in entries {
        assert_eq!(entry["tenant"], GLOBEX, "{entry}");
        assert_ne!(entry["identity"], acme.identity().as_str(), "{entry}");
    }
    cli.fails(&["audit", "--tenant", ACME], "not_found");

    if on_anchor {
        let table = cli.ok(&["token", "list"]);
        for id in &globex.tokens {
            assert!(table.contains(id.as_str()), "{table}");
        }
        assert_absent(&what("token list"), &table, &needles);
        let table = cli.ok(&["mics", "list"]);
        for serial in &globex.serials {
            assert!(table.contains(serial.as_str()), "{table}");
        }
        assert_absent(&what("mics list"), &table, &needles);
        let mics = cli.json(&["mics", "list"]);
        assert_absent(&what("mics list -o json"), &scrubbed(&mics), &needles);
        cli.fails(&["mics", "get", &acme.serials[0]], "not_found");
    } else {
        let stderr = cli.fails(&["token", "list"], "(409)");
        assert_absent(&what("token list"), &stderr, &needles);
        let stderr = cli.fails(&["mics", "list"], "not_an_anchor");
        assert_absent(&what("mics list"), &stderr, &needles);
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    event: String,
    data: Value,
    raw: String,
}

/// An open `GET /v1/watch`, read event by event.
struct Watch {
    what: String,
    response: reqwest::Response,
    buffer: String,
}

impl Watch {
    async fn open(http: &reqwest::Client, key: &str, base: &str, what: &str) -> Watch {
        let response = http
            .get(format!("{base}/v1/watch"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{what}");
        Watch {
            what: what.to_string(),
            response,
            buffer: String::new(),
        }
    }

    /// The next event before `deadline`, skipping keep-alive comments; `None` when none came.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Event> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_sse(&block) {
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

    /// Every event until one `done` admits (included), within `limit`.
    async fn until(&mut self, limit: Duration, done: impl Fn(&Event) -> bool) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let Some(event) = self.next(deadline).await else {
                panic!(
                    "{}: no awaited event within {limit:?}; saw {seen:#?}",
                    self.what
                );
            };
            let last = done(&event);
            seen.push(event);
            if last {
                return seen;
            }
        }
    }

    /// Every event that arrives within `limit`.
    async fn during(&mut self, limit: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        while let Some(event) = self.next(deadline).await {
            seen.push(event);
        }
        seen
    }
}

fn parse_sse(block: &str) -> Option<Event> {
    let (mut id, mut event, mut data) = (String::new(), String::from("message"), String::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.to_string(),
            "event" => event = value.to_string(),
            "data" => data.push_str(value),
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(Event {
        id,
        event,
        data: serde_json::from_str(&data).unwrap_or(Value::String(data.clone())),
        raw: data,
    })
}

/// `<epoch>-<seq>` of an event id.
fn event_seq(id: &str) -> (String, u64) {
    let (epoch, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("not an event id: {id}"));
    (epoch.to_string(), seq.parse().unwrap())
}

/// The newest journal position among `events`, checking they share one epoch.
fn newest(events: &[&Event]) -> (String, u64) {
    let positions: Vec<(String, u64)> = events.iter().map(|e| event_seq(&e.id)).collect();
    let epoch = positions[0].0.clone();
    assert!(positions.iter().all(|(e, _)| *e == epoch), "{events:?}");
    (epoch, positions.iter().map(|(_, s)| *s).max().unwrap())
}

/// Whether an event is globex's to see: its own tenant's, or a fleet-wide policy.
fn globex_may_see(kind: &str, tenant: Option<&str>) -> bool {
    tenant == Some(GLOBEX) || (tenant.is_none() && kind == "fleet_policies")
}

/// A `nexus watch` child, read line by line.
struct Watcher {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(mut cmd: Command) -> Watcher {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Watcher {
            child,
            stdout,
            stderr,
        }
    }

    fn connected(&self) {
        let line = self
            .stderr
            .recv_timeout(Duration::from_secs(10))
            .expect("the watcher connects");
        assert!(line.starts_with("watching"), "{line}");
    }

    /// Lines until one contains `want`, within `limit`.
    fn until(&self, want: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stdout.recv_timeout(left).unwrap_or_else(|_| {
                panic!("nexus watch printed no {want:?} in {limit:?}: {seen:#?}")
            });
            let done = line.contains(want);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next gRPC watch event before `deadline`; `None` when none came.
async fn next_grpc(
    stream: &mut tonic::Streaming<proto::WatchEvent>,
    deadline: tokio::time::Instant,
) -> Option<proto::WatchEvent> {
    tokio::time::timeout_at(deadline, stream.message())
        .await
        .ok()
        .map(|m| {
            m.expect("the stream stays readable")
                .expect("the stream goes on")
        })
}

/// Changes in acme reach a fleet admin's streams and never globex's; globex's own change,
/// journaled after them, does.
async fn watch_isolation(
    api: &Api,
    root: &str,
    root_dir: &Path,
    anchor: &str,
    cli_node: &Cli,
    acme: &mut Tenant,
    globex: &mut Tenant,
) {
    let pem = std::fs::read_to_string(root_dir.join("trust").join("root.pem")).unwrap();
    let fleet_root = nexus_ca::pem_to_der(&pem).unwrap().swap_remove(0);
    // No overall timeout: the streams stay open.
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(nexus_ca::api_client_config(fleet_root, None))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let node = globex.apis[0].clone();
    let mut globex_anchor = Watch::open(&http, &globex.key, anchor, "globex on the anchor").await;
    let mut globex_node = Watch::open(&http, &globex.key, &node, "globex on its node").await;
    let mut admin_anchor = Watch::open(&http, root, anchor, "the admin on the anchor").await;
    let mut admin_node = Watch::open(&http, root, &node, "the admin on globex's node").await;
    let mut grpc = Vec::new();
    for base in [anchor, node.as_str()] {
        let mut nexus = NexusClient::new(tls_channel(root_dir, base).await);
        let stream = nexus
            .watch(authorized(proto::WatchRequest::default(), &globex.key))
            .await
            .unwrap()
            .into_inner();
        grpc.push((base.to_string(), nexus, stream));
    }
    let cli_watch = Watcher::start(cli_node.cmd(&["watch", "-o", "json"]));
    cli_watch.connected();

    // Changes in acme: a route written on acme's node, its tenant record, a new key, a node
    // drained.
    acme.routes.push("acme-route-2-7f3c19".into());
    let body = route(
        &acme.routes[1],
        &format!("watched {ACME_MARK}"),
        &acme.nodes[1],
        10,
    );
    let path = format!("/v1/routes/{}", acme.routes[1]);
    api.expect(
        &acme.key,
        Method::PUT,
        &acme.apis[0],
        &path,
        Some(&body),
        201,
    )
    .await;
    api.expect(
        root,
        Method::PATCH,
        anchor,
        "/v1/tenants/acme",
        Some(&json!({"name": "Acme Renamed"})),
        200,
    )
    .await;
    let body = json!({"name": format!("viewer {ACME_MARK}"), "role": "viewer"});
    let (viewer, _) = create_key(api, anchor, &acme.key, body).await;
    acme.other_keys.push(viewer.clone());
    let drained = acme.nodes[1].clone();
    api.expect(
        root,
        Method::POST,
        anchor,
        &format!("/v1/nodes/{drained}/drain"),
        None,
        200,
    )
    .await;

    // The fleet admin's streams show them: on the anchor all four, on globex's node those of
    // the fleet document and of membership (it holds no acme document).
    let about = |e: &Event, kind: &str, id: &str| e.data["kind"] == kind && e.data["id"] == id;
    let drained_event =
        |e: &Event| about(e, "nodes", &drained) && e.data["object"]["status"] == "draining";
    let limit = Duration::from_secs(20);
    let mut wanted: Vec<(&str, String)> = vec![
        ("routes", acme.routes[1].clone()),
        ("tenants", ACME.to_string()),
        ("keys", viewer.clone()),
    ];
    let mut admin_seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !(wanted.is_empty() && admin_seen.iter().any(drained_event)) {
        let Some(event) = admin_anchor.next(deadline).await else {
            panic!(
                "the admin's stream on the anchor lacks {wanted:?} (or the drain): {admin_seen:#?}"
            );
        };
        wanted.retain(|(kind, id)| !about(&event, kind, id.as_str()));
        admin_seen.push(event);
    }
    let acme_on_anchor: Vec<&Event> = admin_seen
        .iter()
        .filter(|e| e.data["tenant"] == ACME)
        .collect();
    let anchor_acme_last = newest(&acme_on_anchor);
    let mut wanted = vec![("tenants", ACME.to_string())];
    let mut node_seen = Vec::new();
    while !(wanted.is_empty() && node_seen.iter().any(drained_event)) {
        let Some(event) = admin_node.next(deadline).await else {
            panic!(
                "the admin's stream on globex's node lacks {wanted:?} (or the drain): {node_seen:#?}"
            );
        };
        wanted.retain(|(kind, id)| !about(&event, kind, id.as_str()));
        node_seen.push(event);
    }
    let acme_on_node: Vec<&Event> = node_seen
        .iter()
        .filter(|e| e.data["tenant"] == ACME)
        .collect();
    let node_acme_last = newest(&acme_on_node);

    // Then a change in globex, written on its other node: it reaches both journals after
    // acme's changes.
    globex.routes.push("globex-route-2-5be0a4".into());
    let body = route(
        &globex.routes[1],
        &format!("watched {GLOBEX_MARK}"),
        &globex.nodes[1],
        10,
    );
    let path = format!("/v1/routes/{}", globex.routes[1]);
    api.expect(
        &globex.key,
        Method::PUT,
        &globex.apis[1],
        &path,
        Some(&body),
        201,
    )
    .await;
    let needles = acme.needles();
    let globex_route = globex.routes[1].clone();
    let admitted =
        |kind: &str, tenant: Option<&str>| kind == "resync" || globex_may_see(kind, tenant);

    // SSE: globex's change arrives, after acme's in the journal, and nothing of acme's did.
    for (watch, acme_last) in [
        (&mut globex_anchor, &anchor_acme_last),
        (&mut globex_node, &node_acme_last),
    ] {
        let mut seen = watch
            .until(limit, |e| about(e, "routes", &globex_route))
            .await;
        let arrived = seen.last().unwrap().clone();
        let (epoch, seq) = event_seq(&arrived.id);
        assert_eq!(epoch, acme_last.0, "{}: one journal", watch.what);
        assert!(
            seq > acme_last.1,
            "{}: globex's change ({seq}) comes after acme's ({})",
            watch.what,
            acme_last.1
        );
        seen.extend(watch.during(Duration::from_secs(1)).await);
        for event in &seen {
            let kind = event.data["kind"].as_str().unwrap_or(event.event.as_str());
            assert!(
                admitted(kind, event.data["tenant"].as_str()),
                "{} was shown {event:?}",
                watch.what
            );
            assert_absent(&watch.what, &event.raw, &needles);
        }
        eprintln!("{}: {} event(s), none of acme's", watch.what, seen.len());
    }

    // gRPC Watch: the same journals, the same filter.
    for (base, _client, stream) in &mut grpc {
        let acme_last = if base.as_str() == anchor {
            &anchor_acme_last
        } else {
            &node_acme_last
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let Some(event) = next_grpc(stream, deadline).await else {
                panic!("gRPC Watch on {base}: globex's route did not arrive: {seen:#?}");
            };
            let done = event.kind == "routes" && event.object_id == globex_route;
            seen.push(event);
            if done {
                break;
            }
        }
        let (epoch, seq) = event_seq(&seen.last().unwrap().id);
        assert_eq!(epoch, acme_last.0, "gRPC Watch on {base}: one journal");
        assert!(
            seq > acme_last.1,
            "gRPC Watch on {base}: {seq} after {}",
            acme_last.1
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Some(event) = next_grpc(stream, deadline).await {
            seen.push(event);
        }
        for event in &seen {
            assert!(
                admitted(&event.kind, event.tenant.as_deref()),
                "gRPC Watch on {base} was shown {event:?}"
            );
            assert_absent(
                &format!("gRPC Watch on {base}"),
                &format!("{event:?}"),
                &needles,
            );
        }
        eprintln!(
            "gRPC Watch on {base}: {} event(s), none of acme's",
            seen.len()
        );
    }

    // `nexus watch`: globex's change is printed, nothing of acme's.
    let mut lines = cli_watch.until(&globex_route, limit);
    std::thread::sleep(Duration::from_secs(1));
    lines.extend(cli_watch.stdout.try_iter());
    for line in &lines {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("nexus watch -o json printed {line:?}: {e}"));
        let kind = event["data"]["kind"]
            .as_str()
            .unwrap_or(event["event"].as_str().unwrap_or(""));
        assert!(
            admitted(kind, event["data"]["tenant"].as_str()),
            "nexus watch printed {line}"
        );
        assert_absent("nexus watch", line, &needles);
    }
    eprintln!(
        "nexus watch: {} line(s), none of acme's; the admin's streams showed {} and {} of acme's events",
        lines.len(),
        acme_on_anchor.len(),
        acme_on_node.len()
    );
}

/// Rows of every column of every table of `db` holding `needle`, as `table.column: n`.
fn rows_holding(db: &rusqlite::Connection, needle: &[u8]) -> Vec<String> {
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut hits = Vec::new();
    for table in tables {
        let columns: Vec<String> = db
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for column in columns {
            let n: i64 = db
                .query_row(
                    &format!(
                        "SELECT count(*) FROM \"{table}\" WHERE instr(CAST(\"{column}\" AS BLOB), ?1) > 0"
                    ),
                    [needle],
                    |r| r.get(0),
                )
                .unwrap();
            if n > 0 {
                hits.push(format!("{table}.{column}: {n}"));
            }
        }
    }
    hits
}

fn open_ro(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        dir.join("nexus.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// Rows per table (those with a `doc_id` column) of document `doc`.
fn document_rows(db: &rusqlite::Connection, doc: &str) -> Vec<(String, i64)> {
    let tables: Vec<String> = db
        .prepare(
            "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) c \
             WHERE m.type = 'table' AND c.name = 'doc_id'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        tables.len() >= 5,
        "config_chunks, config_changes, config_sync, config_objects, config_views: {tables:?}"
    );
    tables
        .into_iter()
        .map(|t| {
            let n: i64 = db
                .query_row(
                    &format!("SELECT count(*) FROM \"{t}\" WHERE doc_id = ?1"),
                    [doc],
                    |r| r.get(0),
                )
                .unwrap();
            (t, n)
        })
        .collect()
}

fn change_hashes(db: &rusqlite::Connection, doc: Option<&str>) -> BTreeSet<String> {
    let (sql, args): (&str, Vec<&str>) = match doc {
        Some(doc) => (
            "SELECT hash FROM config_changes WHERE doc_id = ?1",
            vec![doc],
        ),
        None => ("SELECT hash FROM config_changes", vec![]),
    };
    db.prepare(sql)
        .unwrap()
        .query_map(rusqlite::params_from_iter(args), |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Files under `dir` (the audit log excepted: it records the caller's own attempts) whose bytes
/// hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("audit.db") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path);
            }
        }
    }
    hits
}

/// The DER of the MIC in a node's data directory.
fn mic_der(dir: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(dir.join("node.pem")).unwrap();
    nexus_ca::pem_to_der(&pem).unwrap().swap_remove(0)
}

/// acme's document is on the anchor and acme's nodes, and nowhere on globex's.
fn replication_isolation(anchor_dir: &Path, acme: &Tenant, globex: &Tenant) {
    let anchor = open_ro(anchor_dir);
    let acme_changes = change_hashes(&anchor, Some("tenant/acme"));
    // Genesis aside: two routes, two keys, a snapshot.
    assert!(acme_changes.len() >= 5, "{acme_changes:?}");
    let acme_mics: Vec<Vec<u8>> = acme.dirs.iter().map(|d| mic_der(d)).collect();
    // acme's first node authored a change of acme's document: its MIC came with it.
    assert!(
        !rows_holding(&anchor, &acme_mics[0]).is_empty(),
        "the anchor stores the author's MIC of acme's change"
    );
    // The searches find what is there: acme's nodes hold acme's document and its names.
    for dir in &acme.dirs {
        let db = open_ro(dir);
        assert!(
            change_hashes(&db, Some("tenant/acme")).is_superset(&acme_changes),
            "{} holds every change of acme's document",
            dir.display()
        );
        for (table, rows) in document_rows(&db, "tenant/acme") {
            if table != "config_sync" {
                assert!(rows > 0, "{}: {table} holds acme's document", dir.display());
            }
        }
        assert!(!rows_holding(&db, ACME_MARK.as_bytes()).is_empty());
        assert!(!files_holding(dir, ACME_MARK.as_bytes()).is_empty());
    }
    for dir in &globex.dirs {
        let db = open_ro(dir);
        let here = dir.display();
        // Its own tenant's document is here, found by the same queries.
        for (table, rows) in document_rows(&db, "tenant/globex") {
            if table != "config_sync" {
                assert!(rows > 0, "{here}: {table} holds globex's document");
            }
        }
        assert!(!rows_holding(&db, GLOBEX_MARK.as_bytes()).is_empty());
        assert!(!files_holding(dir, GLOBEX_MARK.as_bytes()).is_empty());
        // Not a row of acme's document, not one of its changes under any document.
        for (table, rows) in document_rows(&db, "tenant/acme") {
            assert_eq!(
                rows, 0,
                "{here}: {table} holds {rows} row(s) of acme's document"
            );
        }
        let held = change_hashes(&db, None);
        let leaked: Vec<&String> = held.intersection(&acme_changes).collect();
        assert!(leaked.is_empty(), "{here} holds acme's changes {leaked:?}");
        // No acme join token, certificate or change author.
        let tokens: i64 = db
            .query_row(
                "SELECT count(*) FROM tokens WHERE tenant = 'acme'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tokens, 0, "{here} holds acme's join tokens");
        for id in &acme.nodes {
            let certificates: i64 = db
                .query_row(
                    "SELECT count(*) FROM certificates WHERE node_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(certificates, 0, "{here} holds a certificate of {id}");
        }
        for (der, dir) in acme_mics.iter().zip(&acme.dirs) {
            let hits = rows_holding(&db, der);
            assert!(
                hits.is_empty(),
                "{here} holds the MIC of {}: {hits:?}",
                dir.display()
            );
        }
        // Nothing names acme's objects: not in a row, not in a file (free pages and the WAL
        // included).
        for needle in acme.document_needles() {
            let rows = rows_holding(&db, needle.as_bytes());
            assert!(rows.is_empty(), "{here}: {needle:?} in {rows:?}");
            let files = files_holding(dir, needle.as_bytes());
            assert!(files.is_empty(), "{here}: {needle:?} in {files:?}");
        }
        for token in &acme.tokens {
            let rows = rows_holding(&db, token.as_bytes());
            assert!(rows.is_empty(), "{here}: acme's token {token} in {rows:?}");
        }
    }
}
