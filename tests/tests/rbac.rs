//! Who may do what, against real processes: API keys created through the API for every role,
//! a matrix of every route × every role, tenant isolation (another tenant's objects are 404,
//! not 403), revoked keys, OIDC bearer tokens from a local issuer, per-tenant rate limits, and
//! the audit log (every call, read-only, shipped to the anchor).

use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use nexus_tests::{Fleet, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }
}

fn route(id: &str) -> Value {
    json!({
        "id": id, "name": format!("route {id}"), "tenant_id": "", "priority": 10,
        "match": {"source_node_ids": [], "dest_capabilities": [], "stream_modes": ["RO"], "message_types": [7]},
        "action": {"type": "allow"}, "enabled": true, "created_at": 0
    })
}

async fn create_key(api: &Api, admin: &str, role: &str, tenant: Option<&str>) -> (String, String) {
    let body = json!({"name": format!("{role} key"), "role": role, "tenant": tenant});
    let (status, created, headers) = api.call(admin, Method::POST, "/v1/keys", Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["key"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        headers[reqwest::header::LOCATION].to_str().unwrap(),
        format!("/v1/keys/{id}")
    );
    assert!(
        created["key"].get("key_hash").is_none(),
        "the hash never leaves: {created}"
    );
    (id, created["secret"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_tenants_audit_and_rate_limits() {
    let mut fleet = Fleet::init().await.unwrap();
    let api = Api {
        http: nexus_tests::api_client(&fleet.anchor().dir).unwrap(),
        base: fleet.anchor().api.clone(),
    };
    let root = fleet.admin_key.clone();
    for t in ["acme", "globex"] {
        let (s, b, _) = api
            .call(
                &root,
                Method::POST,
                "/v1/tenants",
                Some(&json!({"id": t, "name": t})),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (_, fleet_admin) = create_key(&api, &root, "fleet-admin", None).await;
    let (_, admin) = create_key(&api, &root, "admin", Some("acme")).await;
    let (_, operator) = create_key(&api, &admin, "operator", Some("acme")).await;
    let (viewer_id, viewer) = create_key(&api, &admin, "viewer", Some("acme")).await;
    let (_, globex_admin) = create_key(&api, &root, "admin", Some("globex")).await;

    // whoami reflects what each key is.
    for (key, role, tenant) in [
        (&fleet_admin, "fleet-admin", Value::Null),
        (&admin, "admin", json!("acme")),
        (&operator, "operator", json!("acme")),
        (&viewer, "viewer", json!("acme")),
    ] {
        let (s, me, _) = api.call(key, Method::GET, "/v1/whoami", None).await;
        assert_eq!(s, 200);
        assert_eq!(me["role"], role, "{me}");
        assert_eq!(me["tenant"], tenant, "{me}");
    }

    // A tenant admin cannot mint fleet-admin keys, nor keys of another tenant (which it
    // cannot see: 404).
    let (s, _, _) = api
        .call(
            &admin,
            Method::POST,
            "/v1/keys",
            Some(&json!({"name": "x", "role": "fleet-admin"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _, _) = api
        .call(
            &admin,
            Method::POST,
            "/v1/keys",
            Some(&json!({"name": "x", "role": "admin", "tenant": "globex"})),
        )
        .await;
    assert_eq!(s, 404);

    // The matrix: every route, every role. Each row is the least role that may call it
    // (0 viewer, 1 operator, 2 admin, 3 fleet-admin); a role below gets 403, a role at or
    // above never 401 or 403.
    let anchor_id = fleet.anchor().node_id.clone();
    let matrix: Vec<(Method, String, Option<Value>, usize)> = vec![
        (Method::GET, "/v1/nodes".into(), None, 0),
        (Method::GET, format!("/v1/nodes/{anchor_id}"), None, 0),
        (Method::GET, "/v1/routes".into(), None, 0),
        (Method::POST, "/v1/routes".into(), Some(route("m1")), 1),
        (Method::GET, "/v1/routes/m1".into(), None, 0),
        (Method::PUT, "/v1/routes/m2".into(), Some(route("m2")), 1),
        (
            Method::PATCH,
            "/v1/routes/m2".into(),
            Some(json!({"priority": 11})),
            1,
        ),
        (Method::DELETE, "/v1/routes/m2".into(), None, 1),
        (Method::GET, "/v1/sites/east/routes".into(), None, 0),
        (
            Method::POST,
            "/v1/sites/east/routes".into(),
            Some(route("s1")),
            1,
        ),
        (Method::GET, "/v1/firmware/targets".into(), None, 0),
        (Method::GET, "/v1/tenants".into(), None, 0),
        (Method::GET, "/v1/tenants/acme".into(), None, 0),
        (
            Method::POST,
            "/v1/tenants".into(),
            Some(json!({"id": "t9", "name": "t9"})),
            3,
        ),
        (
            Method::PATCH,
            "/v1/tenants/acme".into(),
            Some(json!({"name": "Acme"})),
            3,
        ),
        (Method::GET, "/v1/fleet/policies".into(), None, 0),
        (
            Method::POST,
            "/v1/fleet/policies".into(),
            Some(route("f1")),
            3,
        ),
        (Method::GET, "/v1/fleet/settings".into(), None, 0),
        (Method::PUT, "/v1/fleet/settings".into(), Some(json!({})), 3),
        (Method::GET, "/v1/config/status".into(), None, 0),
        (Method::GET, "/v1/config/snapshots".into(), None, 0),
        (
            Method::POST,
            "/v1/config/snapshots".into(),
            Some(json!({"name": "s"})),
            1,
        ),
        (Method::GET, "/v1/transparency/sth".into(), None, 0),
        (Method::GET, "/v1/anchors".into(), None, 0),
        (
            Method::POST,
            "/v1/anchors".into(),
            Some(json!({"node_id": "0".repeat(32)})),
            3,
        ),
        (Method::GET, "/v1/keys".into(), None, 2),
        (Method::GET, "/v1/audit".into(), None, 2),
        (Method::GET, "/v1/tenants/acme/oidc".into(), None, 2),
        (Method::GET, "/v1/tokens".into(), None, 2),
        (Method::POST, "/v1/tokens".into(), Some(json!({})), 2),
        (Method::GET, "/v1/mics".into(), None, 2),
        (
            Method::POST,
            "/v1/mics/csr".into(),
            Some(json!({"csr_pem": "x"})),
            3,
        ),
        (
            Method::POST,
            format!("/v1/nodes/{}/drain", "f".repeat(32)),
            None,
            1,
        ),
        (
            Method::POST,
            format!("/v1/nodes/{}/decommission", "f".repeat(32)),
            None,
            2,
        ),
        (Method::GET, "/v1/whoami".into(), None, 0),
    ];
    let roles = [
        ("viewer", &viewer),
        ("operator", &operator),
        ("admin", &admin),
        ("fleet-admin", &fleet_admin),
    ];
    for (method, path, body, least) in &matrix {
        for (rank, (role, key)) in roles.iter().enumerate() {
            let (status, answer, _) = api.call(key, method.clone(), path, body.as_ref()).await;
            if rank < *least {
                assert_eq!(status, 403, "{role} {method} {path}: {answer}");
                assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
            } else {
                assert!(
                    status != 401 && status != 403,
                    "{role} {method} {path} answered {status}: {answer}"
                );
            }
        }
    }

    // Isolation: acme's callers never see globex, and globex's objects are absent, not
    // forbidden.
    let (s, _, _) = api
        .call(
            &globex_admin,
            Method::PUT,
            "/v1/routes/g1",
            Some(&route("g1")),
        )
        .await;
    assert_eq!(s, 201);
    for (method, path) in [
        (Method::GET, "/v1/routes/g1?tenant=globex"),
        (Method::DELETE, "/v1/routes/g1?tenant=globex"),
        (Method::GET, "/v1/tenants/globex"),
        (Method::GET, "/v1/tenants/globex/oidc"),
        (Method::GET, "/v1/keys?tenant=globex"),
    ] {
        let (s, b, _) = api.call(&admin, method.clone(), path, None).await;
        assert_eq!(s, 404, "{method} {path}: {b}");
    }
    let (_, tenants, _) = api.call(&viewer, Method::GET, "/v1/tenants", None).await;
    let ids: Vec<&str> = tenants["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["acme"], "{tenants}");
    let (_, keys, _) = api.call(&admin, Method::GET, "/v1/keys", None).await;
    assert!(
        keys["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["tenant"] == "acme"),
        "{keys}"
    );
    // The route acme's operator wrote is in acme's document, not globex's.
    let (s, _, _) = api
        .call(&globex_admin, Method::GET, "/v1/routes/m1", None)
        .await;
    assert_eq!(s, 404);

    // Optimistic concurrency: ETag on reads and writes, If-Match on writes.
    let (_, _, h) = api
        .call(&operator, Method::GET, "/v1/routes/m1", None)
        .await;
    let tag = h["etag"].to_str().unwrap().to_string();
    let with_if_match = |tag: &str, method: Method, body: Option<Value>| {
        let mut r = api
            .http
            .request(method, format!("{}/v1/routes/m1", api.base))
            .bearer_auth(&operator)
            .header("if-match", tag.to_string());
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send()
    };
    let stale = with_if_match(
        "\"0000000000000000\"",
        Method::PATCH,
        Some(json!({"priority": 12})),
    )
    .await
    .unwrap();
    assert_eq!(stale.status().as_u16(), 409);
    let body: Value = stale.json().await.unwrap();
    assert_eq!(body["error"]["code"], "version_conflict", "{body}");
    let fresh = with_if_match(&tag, Method::PATCH, Some(json!({"priority": 12})))
        .await
        .unwrap();
    assert_eq!(fresh.status().as_u16(), 200);
    let new_tag = fresh.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_tag, tag);
    let old = with_if_match(&tag, Method::DELETE, None).await.unwrap();
    assert_eq!(old.status().as_u16(), 409, "the old tag no longer matches");

    // Anchors were enrolled in tenant "default", but they are the fleet's: that tenant's
    // admin may not decommission, drain or relabel them, nor see their certificates.
    let (_, default_admin) = create_key(&api, &root, "admin", Some("default")).await;
    for action in ["decommission", "drain"] {
        let (s, b, _) = api
            .call(
                &default_admin,
                Method::POST,
                &format!("/v1/nodes/{anchor_id}/{action}"),
                None,
            )
            .await;
        assert_eq!(s, 403, "{action}: {b}");
    }
    let (_, mics, _) = api
        .call(&default_admin, Method::GET, "/v1/mics", None)
        .await;
    assert_eq!(mics["items"].as_array().map(Vec::len), Some(0), "{mics}");

    // An open watch ends when its key is revoked.
    let (watcher_id, watcher) = create_key(&api, &admin, "viewer", Some("acme")).await;
    let mut stream = api
        .http
        .get(format!("{}/v1/watch?kinds=routes", api.base))
        .bearer_auth(&watcher)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let (s, _, _) = api
        .call(
            &admin,
            Method::DELETE,
            &format!("/v1/keys/{watcher_id}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let mut seen = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream stayed open after the revocation: {seen}"
    );
    assert!(seen.contains("event: unauthenticated"), "{seen}");

    // Revoking a key refuses it at once; it stays listed.
    let (s, revoked, _) = api
        .call(
            &admin,
            Method::DELETE,
            &format!("/v1/keys/{viewer_id}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let (s, b, _) = api.call(&viewer, Method::GET, "/v1/nodes", None).await;
    assert_eq!(s, 401, "{b}");

    // Rate limits per tenant: 429 with Retry-After past the burst; counted.
    let (s, b, _) = api
        .call(
            &root,
            Method::PATCH,
            "/v1/tenants/globex",
            Some(&json!({"quotas": {"api_requests_per_second": 1, "api_burst": 3}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let mut limited = None;
    for _ in 0..10 {
        let (s, b, h) = api
            .call(&globex_admin, Method::GET, "/v1/nodes", None)
            .await;
        if s == 429 {
            limited = Some((b, h));
            break;
        }
        assert_eq!(s, 200, "{b}");
    }
    let (body, headers) = limited.expect("globex was limited within 10 calls");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another tenant is not limited by globex's quota.
    let (s, _, _) = api.call(&admin, Method::GET, "/v1/nodes", None).await;
    assert_eq!(s, 200);
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        // Series naming a tenant are a fleet admin's to read.
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        nexus_tests::sum_metric(&text, "nexus_api_rate_limited_total", "tenant=\"globex\"") >= 1.0,
        "{text}"
    );

    // The audit log: calls with who, what, result and the answer's trace id; tenant-confined;
    // nothing can edit it through the API.
    let (_, _, h) = api
        .call(&operator, Method::DELETE, "/v1/routes/m1", None)
        .await;
    let trace = h["x-trace-id"].to_str().unwrap().to_string();
    let found = std::sync::Mutex::new(Value::Null);
    wait_until(Duration::from_secs(10), "the delete is audited", || async {
        let (_, page, _) = api
            .call(
                &admin,
                Method::GET,
                "/v1/audit?action=DELETE&limit=50",
                None,
            )
            .await;
        let hit = page["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|e| e["trace_id"] == trace.as_str())
                .cloned()
        });
        let seen = hit.is_some();
        *found.lock().unwrap() = hit.unwrap_or(Value::Null);
        seen
    })
    .await
    .unwrap();
    let found = found.into_inner().unwrap();
    assert_eq!(found["action"], "DELETE /v1/routes/{id}", "{found}");
    assert_eq!(found["target"], "/v1/routes/m1");
    assert_eq!(found["tenant"], "acme");
    assert_eq!(found["role"], "operator");
    assert_eq!(found["result"], "ok");
    let (_, denied, _) = api
        .call(
            &admin,
            Method::GET,
            "/v1/audit?result=denied&limit=1000",
            None,
        )
        .await;
    assert!(
        denied["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant"] == "acme"),
        "acme's admin sees only acme's entries: {denied}"
    );
    let (_, globex_denied, _) = api
        .call(
            &root,
            Method::GET,
            "/v1/audit?tenant=globex&result=denied",
            None,
        )
        .await;
    assert!(
        globex_denied["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == 429),
        "{globex_denied}"
    );
    let (_, unauth, _) = api
        .call(
            &root,
            Method::GET,
            "/v1/audit?identity=unauthenticated",
            None,
        )
        .await;
    assert!(
        !unauth["items"].as_array().unwrap().is_empty(),
        "the revoked key's call: {unauth}"
    );
    for method in [Method::DELETE, Method::PUT, Method::POST, Method::PATCH] {
        let (s, _, _) = api.call(&root, method.clone(), "/v1/audit", None).await;
        assert_eq!(s, 405, "{method} /v1/audit");
    }
    let (s, b, _) = api
        .call(&root, Method::GET, "/v1/audit?since=yesterday", None)
        .await;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"].as_str().unwrap().contains("since"),
        "{b}"
    );

    // Calls served by another node reach the anchor's audit log.
    let token = fleet.token(json!({"tenant": "acme"})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join(&token, &[]).await.unwrap();
    let (node_dir, node_base, node_id) = {
        let n = &fleet.nodes[1];
        (n.dir.clone(), n.api.clone(), n.node_id.clone())
    };
    let node_api = Api {
        http: nexus_tests::api_client(&node_dir).unwrap(),
        base: node_base,
    };
    // The node learns acme's keys from the replicated configuration.
    wait_until(
        Duration::from_secs(20),
        "the acme admin key works on the node",
        || async {
            node_api
                .call(&admin, Method::GET, "/v1/whoami", None)
                .await
                .0
                == 200
        },
    )
    .await
    .unwrap();
    // Operator labels: set by the tenant's operator, replicated in its document, shown and
    // filtered on; another tenant cannot touch the node.
    let labels_path = format!("/v1/nodes/{node_id}/labels");
    let (s, b, _) = api
        .call(
            &operator,
            Method::PATCH,
            &labels_path,
            Some(&json!({"labels": {"zone": "east", "gpu": "a100"}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["labels"]["zone"], "east", "{b}");
    let (s, _, _) = api
        .call(
            &globex_admin,
            Method::PATCH,
            &labels_path,
            Some(&json!({"labels": {"zone": "west"}})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, b, _) = api
        .call(
            &operator,
            Method::PATCH,
            &labels_path,
            Some(&json!({"labels": {"bad key!": "x"}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, b, _) = api
        .call(
            &operator,
            Method::PATCH,
            &labels_path,
            Some(&json!({"labels": {"gpu": null}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["labels"].get("gpu").is_none(), "{b}");
    wait_until(
        Duration::from_secs(20),
        "the node shows its label everywhere",
        || async {
            let mut all = true;
            for a in [&api, &node_api] {
                let (_, page, _) = a
                    .call(&root, Method::GET, "/v1/nodes?label=zone=east", None)
                    .await;
                let ids: Vec<&str> = page["items"]
                    .as_array()
                    .map(|i| i.iter().filter_map(|n| n["node_id"].as_str()).collect())
                    .unwrap_or_default();
                all &= ids == [node_id.as_str()];
            }
            all
        },
    )
    .await
    .unwrap();
    let (s, _, _) = api
        .call(&root, Method::GET, "/v1/nodes?status=sleeping", None)
        .await;
    assert_eq!(s, 400);
    let (_, page, _) = api
        .call(
            &root,
            Method::GET,
            "/v1/nodes?tenant=acme&status=online",
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");

    let (_, _, h) = node_api.call(&admin, Method::GET, "/v1/nodes", None).await;
    let trace = h["x-trace-id"].to_str().unwrap().to_string();
    wait_until(
        Duration::from_secs(20),
        "the node's call is on the anchor",
        || async {
            let (_, page, _) = api
                .call(
                    &root,
                    Method::GET,
                    &format!("/v1/audit?node={node_id}&limit=1000"),
                    None,
                )
                .await;
            page["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|e| e["trace_id"] == trace.as_str()))
        },
    )
    .await
    .unwrap();
}

/// A local OIDC issuer: an ed25519 key, its JWKS served on loopback by this test.
struct Issuer {
    url: String,
    encoding: jsonwebtoken::EncodingKey,
    _server: tokio::task::JoinHandle<()>,
}

impl Issuer {
    async fn start() -> Issuer {
        let signing = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let public = signing.verifying_key().to_bytes();
        use base64::Engine;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"}]});
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let der = signing.to_pkcs8_der().unwrap();
        Issuer {
            url,
            encoding: jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
            _server: server,
        }
    }

    fn token(&self, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_tokens_from_a_tenants_issuer() {
    let fleet = Fleet::init().await.unwrap();
    let api = Api {
        http: nexus_tests::api_client(&fleet.anchor().dir).unwrap(),
        base: fleet.anchor().api.clone(),
    };
    let root = fleet.admin_key.clone();
    let (s, _, _) = api
        .call(
            &root,
            Method::POST,
            "/v1/tenants",
            Some(&json!({"id": "acme", "name": "Acme"})),
        )
        .await;
    assert_eq!(s, 201);
    let issuer = Issuer::start().await;
    let provider = json!({
        "issuer": issuer.url, "audience": "nexus", "jwks_uri": format!("{}/jwks.json", issuer.url),
        "role_claim": "nexus_role", "default_role": "viewer"
    });
    // A malformed provider is refused with the field named.
    let (s, b, _) = api
        .call(
            &root,
            Method::PUT,
            "/v1/tenants/acme/oidc",
            Some(&json!({"issuer": "ftp://x", "audience": "nexus", "jwks_uri": "http://x", "default_role": "viewer"})),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("issuer"),
        "{b}"
    );
    let (s, b, _) = api
        .call(&root, Method::PUT, "/v1/tenants/acme/oidc", Some(&provider))
        .await;
    assert_eq!(s, 200, "{b}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = issuer.token(json!({
        "iss": issuer.url, "aud": "nexus", "sub": "alice", "exp": now + 600, "nexus_role": "operator"
    }));
    let (s, me, _) = api.call(&good, Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["role"], "operator");
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["identity"], format!("user:{}#alice", issuer.url));
    // An operator token writes acme's routes; a viewer token (the default role) cannot.
    let (s, b, _) = api
        .call(&good, Method::PUT, "/v1/routes/o1", Some(&route("o1")))
        .await;
    assert_eq!(s, 201, "{b}");
    let plain =
        issuer.token(json!({"iss": issuer.url, "aud": "nexus", "sub": "bob", "exp": now + 600}));
    let (s, _, _) = api
        .call(&plain, Method::PUT, "/v1/routes/o2", Some(&route("o2")))
        .await;
    assert_eq!(s, 403);
    // Refused: expired, wrong audience, a role that does not exist, a foreign signer.
    let refused = [
        issuer.token(json!({"iss": issuer.url, "aud": "nexus", "sub": "a", "exp": now - 3600})),
        issuer.token(json!({"iss": issuer.url, "aud": "other", "sub": "a", "exp": now + 600})),
        issuer.token(json!({"iss": issuer.url, "aud": "nexus", "sub": "a", "exp": now + 600, "nexus_role": "fleet-admin"})),
        Issuer::start().await.token(json!({"iss": issuer.url, "aud": "nexus", "sub": "a", "exp": now + 600})),
        issuer.token(json!({"iss": "http://127.0.0.1:1", "aud": "nexus", "sub": "a", "exp": now + 600})),
    ];
    for token in refused {
        let (s, b, _) = api.call(&token, Method::GET, "/v1/whoami", None).await;
        assert_eq!(s, 401, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("refused"),
            "{b}"
        );
    }
    // One issuer signs in to one tenant; keys over plain HTTP only from loopback.
    let (s, _, _) = api
        .call(
            &root,
            Method::POST,
            "/v1/tenants",
            Some(&json!({"id": "globex", "name": "Globex"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, b, _) = api
        .call(
            &root,
            Method::PUT,
            "/v1/tenants/globex/oidc",
            Some(&provider),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"]["code"], "issuer_taken", "{b}");
    let (s, b, _) = api
        .call(
            &root,
            Method::PUT,
            "/v1/tenants/globex/oidc",
            Some(&json!({"issuer": "https://id.example", "audience": "nexus", "jwks_uri": "http://10.1.2.3/jwks.json", "default_role": "viewer"})),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("jwks_uri"),
        "{b}"
    );

    // Removing the provider refuses its tokens.
    let (s, _, _) = api
        .call(&root, Method::DELETE, "/v1/tenants/acme/oidc", None)
        .await;
    assert_eq!(s, 204);
    let (s, _, _) = api.call(&good, Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, 401);

    // The bootstrap key of `nexus init` is listed and can be revoked (after another fleet
    // admin key exists).
    let (_, keys, _) = api.call(&root, Method::GET, "/v1/keys", None).await;
    let bootstrap = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["created_by"] == "nexus init")
        .cloned()
        .expect("the bootstrap key is listed");
    let (_, successor) = create_key(&api, &root, "fleet-admin", None).await;
    let id = bootstrap["id"].as_str().unwrap();
    let (s, b, _) = api
        .call(&successor, Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, _) = api.call(&root, Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, 401, "the revoked bootstrap key is refused");
    let (s, _, _) = api.call(&successor, Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, 200);
}
