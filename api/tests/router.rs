//! Router behaviour against an in-memory backend: auth, JSON errors, pagination.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use nexus_api::wire::{Addresses, CreateToken, CreatedToken, Health, Node, Page, Token};
use nexus_api::{ApiError, Backend, router};
use tower::ServiceExt;

struct Fleet {
    nodes: Vec<Node>,
}

fn node(id: String) -> Node {
    Node {
        node_id: id,
        hostname: "h".into(),
        role: "node".into(),
        site: "s".into(),
        tenant_id: "default".into(),
        labels: Default::default(),
        addresses: Addresses {
            api: None,
            gossip: None,
            quic: None,
        },
        status: "online".into(),
        health: "ok".into(),
        nexlink_version: "0".into(),
        nexroute_version: "0".into(),
        nic_model: String::new(),
        nic_backend: String::new(),
        dataplane: None,
        firmware_version: String::new(),
        capabilities: vec![],
        trust_level: 0,
        config_version: 0,
        last_heartbeat: None,
        created_at: None,
        updated_at: "2026-01-01T00:00:00Z".into(),
        generation: 1,
        certificate_serial: None,
        certificate_expires_at: None,
        certificate_revoked: false,
        offline_since: None,
    }
}

#[async_trait]
impl Backend for Fleet {
    fn authenticate_key(&self, key: &str) -> Option<nexus_api::wire::Caller> {
        (key == "good").then(|| nexus_api::wire::Caller {
            identity: "api-key:good".into(),
            role: "fleet-admin".into(),
            tenant: None,
        })
    }
    fn nodes(&self) -> Vec<Node> {
        self.nodes.clone()
    }
    fn node(&self, id: &str) -> Option<Node> {
        self.nodes.iter().find(|n| n.node_id == id).cloned()
    }
    async fn drain(&self, id: &str) -> Result<Node, ApiError> {
        self.node(id).ok_or_else(|| ApiError::not_found("no"))
    }
    async fn decommission(&self, id: &str) -> Result<Node, ApiError> {
        self.node(id).ok_or_else(|| ApiError::not_found("no"))
    }
    async fn create_token(&self, _: CreateToken) -> Result<CreatedToken, ApiError> {
        Err(ApiError::bad_request("nope"))
    }
    async fn tokens(&self) -> Result<Vec<Token>, ApiError> {
        Ok(vec![])
    }
    async fn revoke_token(&self, _: &str) -> Result<Token, ApiError> {
        Err(ApiError::not_found("no"))
    }
    fn health(&self) -> Health {
        Health {
            status: "ok".into(),
            node_id: "n".into(),
            fleet_id: "f".into(),
            role: "node".into(),
            checks: Default::default(),
        }
    }
    fn metrics(&self) -> String {
        "nexus_test 1\n".into()
    }
}

fn app(n: usize) -> axum::Router {
    let nodes = (0..n).map(|i| node(format!("{i:032x}"))).collect();
    router(Arc::new(Fleet { nodes }))
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn missing_or_wrong_key_is_401_with_a_json_error() {
    let app = app(1);
    let (status, body) = call(&app, "GET", "/v1/nodes", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    let (status, body) = call(&app, "GET", "/v1/nodes", Some("bad"), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (status, _) = call(&app, "GET", "/v1/nodes", Some("good"), "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn pages_walk_every_node_once_in_order() {
    let app = app(7);
    let mut seen = Vec::new();
    let mut uri = "/v1/nodes?limit=3".to_string();
    for _ in 0..10 {
        let (status, body) = call(&app, "GET", &uri, Some("good"), "").await;
        assert_eq!(status, StatusCode::OK);
        let page: Page<Node> = serde_json::from_value(body).unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|n| n.node_id));
        match page.next_cursor {
            Some(c) => uri = format!("/v1/nodes?limit=3&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).map(|i| format!("{i:032x}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field() {
    let app = app(2);
    for uri in [
        "/v1/nodes?limit=0",
        "/v1/nodes?limit=abc",
        "/v1/nodes?limit=5000",
        "/v1/nodes?cursor=zzz",
        "/v1/nodes?colour=red",
    ] {
        let (status, body) = call(&app, "GET", uri, Some("good"), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"]["code"], "invalid_request", "{uri}");
    }
    let (status, body) = call(&app, "GET", "/v1/nodes/XYZ", Some("good"), "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("32 lowercase hex")
    );
    let (status, body) = call(
        &app,
        "POST",
        "/v1/tokens",
        Some("good"),
        "{\"uses\": \"many\"}",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("uses"));
    let (status, body) = call(
        &app,
        "GET",
        &format!("/v1/nodes/{:032x}", 99),
        Some("good"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = call(&app, "GET", "/nope", None, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/v1/tokens")
                .header("authorization", "Bearer good")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no JSON content type"
    );
    let (status, body) = call(&app, "PUT", "/healthz", None, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
