//! The gRPC API (`nexus.v1.Nexus`) against real nodes, on the same port as REST: over TLS with
//! ALPN `h2` (and REST over HTTP/1.1 and HTTP/2 beside it), and over prior-knowledge h2c on a
//! plain-HTTP node. Server reflection lists and describes the service; credentials, roles and
//! tenant confinement are those of REST; a route written over gRPC is the one REST serves;
//! Watch streams changes and says when it cannot resume.

use std::sync::Arc;
use std::time::Duration;

use nexus_api::grpc::proto::nexus_client::NexusClient;
use nexus_api::grpc::proto::{self, WatchEvent};
use nexus_tests::{Fleet, NodeProc};
use prost::Message;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// A channel to the HTTPS API of the node in `node`, trusting its fleet root, with ALPN `h2`.
async fn tls_channel(node: &NodeProc) -> Channel {
    tls_channel_as(node, None).await
}

/// [`tls_channel`] presenting the MIC of the node whose data directory is `mic_dir`.
async fn mic_channel(node: &NodeProc, mic_dir: &std::path::Path) -> Channel {
    let read = |name: &str| std::fs::read_to_string(mic_dir.join(name)).unwrap();
    let key = nexus_ca::NodeKey::from_pkcs8_pem(&read("node.key")).unwrap();
    let chain = nexus_ca::pem_to_der(&read("node.pem")).unwrap();
    let credentials = nexus_ca::Credentials::new(chain, &key).unwrap();
    tls_channel_as(node, Some(credentials)).await
}

async fn tls_channel_as(node: &NodeProc, client: Option<Arc<nexus_ca::Credentials>>) -> Channel {
    let pem = std::fs::read_to_string(node.dir.join("trust").join("root.pem")).unwrap();
    let root = nexus_ca::pem_to_der(&pem).unwrap().swap_remove(0);
    let mut tls = nexus_ca::api_client_config(root, client);
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let addr = node
        .api
        .strip_prefix("https://")
        .expect("the node serves HTTPS")
        .to_string();
    Endpoint::from_shared(node.api.clone())
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, addr) = (connector.clone(), addr.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(
                    addr.parse::<std::net::SocketAddr>().unwrap().ip().into(),
                );
                let stream = connector.connect(name, tcp).await?;
                assert_eq!(
                    stream.get_ref().1.alpn_protocol(),
                    Some(&b"h2"[..]),
                    "the API offers h2"
                );
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

fn to_struct(value: Value) -> prost_types::Struct {
    nexus_api::grpc::json_to_struct(value)
}

fn to_json(object: prost_types::Struct) -> Value {
    nexus_api::grpc::struct_to_json(object, "object").unwrap()
}

fn error_code(status: &Status) -> &str {
    status
        .metadata()
        .get("nexus-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Sends `method` with a JSON body to the anchor's REST API with the admin key.
async fn rest(
    fleet: &Fleet,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
    let mut request = http
        .request(method, format!("{}{path}", fleet.anchor().api))
        .bearer_auth(&fleet.admin_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Creates an API key over REST; returns its secret.
async fn create_key(fleet: &Fleet, role: &str, tenant: &str) -> String {
    let (status, body) = rest(
        fleet,
        reqwest::Method::POST,
        "/v1/keys",
        Some(json!({"name": format!("grpc {role}"), "role": role, "tenant": tenant})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().unwrap().to_string()
}

/// Services the node's reflection (v1 or v1alpha) lists, and the methods of `nexus.v1.Nexus`
/// as its file descriptor (resolved through reflection) declares them.
async fn reflect(channel: Channel) -> (Vec<String>, Vec<String>) {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let mut client = ServerReflectionClient::new(channel);
    let mut ask = async |request: MessageRequest| -> ServerReflectionResponse {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut answers = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        answers.message().await.unwrap().expect("one answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) =
        ask(MessageRequest::ListServices(String::new()))
            .await
            .message_response
    else {
        panic!("reflection did not list services");
    };
    let services = list.service.into_iter().map(|s| s.name).collect();
    let Some(MessageResponse::FileDescriptorResponse(files)) = ask(
        MessageRequest::FileContainingSymbol("nexus.v1.Nexus".into()),
    )
    .await
    .message_response
    else {
        panic!("reflection did not describe nexus.v1.Nexus");
    };
    let mut methods = Vec::new();
    let mut dependencies = Vec::new();
    for bytes in &files.file_descriptor_proto {
        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
        dependencies.extend(file.dependency.clone());
        for service in file.service.iter().filter(|s| s.name() == "Nexus") {
            methods.extend(service.method.iter().map(|m| m.name().to_string()));
        }
    }
    // What it imports resolves too (google.protobuf.Struct), so a client can decode every
    // message, as grpcurl does.
    assert_eq!(dependencies, ["google/protobuf/struct.proto"]);
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        ask(MessageRequest::FileByFilename(dependencies[0].clone()))
            .await
            .message_response
    else {
        panic!("reflection did not serve {}", dependencies[0]);
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.package(), "google.protobuf");
    assert!(file.message_type.iter().any(|m| m.name() == "Struct"));
    (services, methods)
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_beside_rest_over_tls() {
    let fleet = Fleet::init().await.unwrap();
    let anchor = fleet.anchor();
    let channel = tls_channel(anchor).await;
    let mut nexus = NexusClient::new(channel.clone());
    let key = fleet.admin_key.clone();

    // --- reflection: what grpcurl uses to list and call the service --------------------------
    let (services, methods) = reflect(channel.clone()).await;
    assert!(
        services.contains(&"nexus.v1.Nexus".to_string()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.reflection.v1.ServerReflection".to_string()),
        "{services:?}"
    );
    for method in [
        "WhoAmI",
        "ListNodes",
        "GetNode",
        "ListRoutes",
        "GetRoute",
        "PutRoute",
        "DeleteRoute",
        "ListTenants",
        "GetTenant",
        "GetConfigStatus",
        "Watch",
    ] {
        assert!(
            methods.contains(&method.to_string()),
            "{method} in {methods:?}"
        );
    }

    // --- the admin key lists the nodes REST lists ---------------------------------------------
    let nodes = nexus
        .list_nodes(authorized(proto::ListNodesRequest::default(), &key))
        .await
        .unwrap();
    assert!(nodes.metadata().get("x-trace-id").is_some());
    let nodes = nodes.into_inner();
    assert_eq!(nodes.nodes.len(), 1);
    assert_eq!(nodes.nodes[0].node_id, anchor.node_id);
    assert_eq!(nodes.nodes[0].role, "anchor");
    assert_eq!(nodes.next_cursor, "");
    let (status, rest_nodes) = rest(&fleet, reqwest::Method::GET, "/v1/nodes", None).await;
    assert_eq!(status, 200);
    assert_eq!(rest_nodes["items"][0]["node_id"], anchor.node_id.as_str());
    assert_eq!(
        rest_nodes["items"][0]["hostname"],
        nodes.nodes[0].hostname.as_str()
    );
    let me = nexus
        .who_am_i(authorized(proto::WhoAmIRequest {}, &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.role.as_str(), me.tenant.as_deref()),
        ("fleet-admin", None)
    );
    let one = nexus
        .get_node(authorized(
            proto::GetNodeRequest {
                node_id: anchor.node_id.clone(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.node_id, anchor.node_id);
    let bad = nexus
        .get_node(authorized(
            proto::GetNodeRequest {
                node_id: "not-hex".into(),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("32 lowercase hex"), "{bad:?}");
    let absent = nexus
        .get_node(authorized(
            proto::GetNodeRequest {
                node_id: "0".repeat(32),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(absent.code(), Code::NotFound, "{absent:?}");

    // --- credentials: none, or a wrong key, are refused as REST refuses them ------------------
    let none = nexus
        .list_nodes(proto::ListNodesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    assert_eq!(error_code(&none), "unauthenticated");
    assert!(
        none.message().contains("Bearer"),
        "says what to send: {none:?}"
    );
    let wrong = nexus
        .list_nodes(authorized(
            proto::ListNodesRequest::default(),
            "nxk_not-a-key",
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");

    // --- a route put over gRPC is the route REST serves, and back ------------------------------
    let put = nexus
        .put_route(authorized(
            proto::PutRouteRequest {
                tenant: String::new(),
                id: "g1".into(),
                route: Some(to_struct(route("g1", 40))),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(put.created);
    let stored = put.route.unwrap();
    assert!(stored.config_version > 0);
    assert_eq!(to_json(stored.object.unwrap())["priority"], 40);
    let (status, body) = rest(&fleet, reqwest::Method::GET, "/v1/routes/g1", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "g1");
    assert_eq!(body["priority"], json!(40), "an integer, not 40.0: {body}");
    assert_eq!(body["match"]["message_types"], json!([7]));
    let (status, list) = rest(&fleet, reqwest::Method::GET, "/v1/routes", None).await;
    assert_eq!(status, 200, "{list}");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "g1"),
        "{list}"
    );
    // Replacing it is not a creation.
    let again = nexus
        .put_route(authorized(
            proto::PutRouteRequest {
                tenant: String::new(),
                id: "g1".into(),
                route: Some(to_struct(route("g1", 41))),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    // A route written over REST reads over gRPC.
    let (status, body) = rest(
        &fleet,
        reqwest::Method::PUT,
        "/v1/routes/r2",
        Some(route("r2", 50)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let listed = nexus
        .list_routes(authorized(
            proto::ListRoutesRequest {
                limit: 1,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.routes.len(), 1);
    assert_eq!(to_json(listed.routes[0].clone())["id"], "g1");
    assert!(!listed.next_cursor.is_empty(), "a second page follows");
    // The cursor is REST's: it continues the same walk there.
    let (status, rest_page) = rest(
        &fleet,
        reqwest::Method::GET,
        &format!("/v1/routes?cursor={}", listed.next_cursor),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rest_page}");
    assert_eq!(rest_page["items"][0]["id"], "r2");
    let got = nexus
        .get_route(authorized(
            proto::GetRouteRequest {
                tenant: String::new(),
                id: "r2".into(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(to_json(got.object.unwrap())["priority"], 50);
    assert!(got.quarantined.is_empty());
    // A body naming another id is refused with the field.
    let mismatch = nexus
        .put_route(authorized(
            proto::PutRouteRequest {
                tenant: String::new(),
                id: "g2".into(),
                route: Some(to_struct(route("other", 1))),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument, "{mismatch:?}");
    assert!(mismatch.message().starts_with("route.id:"), "{mismatch:?}");
    // Delete over gRPC: gone for REST; deleting again is NotFound.
    let delete = |id: &str| {
        authorized(
            proto::DeleteRouteRequest {
                tenant: String::new(),
                id: id.into(),
            },
            &key,
        )
    };
    nexus.delete_route(delete("g1")).await.unwrap();
    let (status, _) = rest(&fleet, reqwest::Method::GET, "/v1/routes/g1", None).await;
    assert_eq!(status, 404);
    let gone = nexus.delete_route(delete("g1")).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");

    // --- tenants, config status ----------------------------------------------------------------
    let (status, body) = rest(
        &fleet,
        reqwest::Method::POST,
        "/v1/tenants",
        Some(json!({"id": "acme", "name": "Acme Corp"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let tenants = nexus
        .list_tenants(authorized(proto::ListTenantsRequest::default(), &key))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<Value> = tenants
        .tenants
        .into_iter()
        .map(|t| to_json(t)["id"].clone())
        .collect();
    assert!(ids.contains(&json!("acme")), "{ids:?}");
    let status = nexus
        .get_config_status(authorized(proto::GetConfigStatusRequest {}, &key))
        .await
        .unwrap()
        .into_inner();
    let status = to_json(status.status.unwrap());
    assert!(
        status["documents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["document"] == "fleet"),
        "{status}"
    );

    // --- a tenant's viewer: its tenant only, read only -----------------------------------------
    let viewer = create_key(&fleet, "viewer", "acme").await;
    let me = nexus
        .who_am_i(authorized(proto::WhoAmIRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.role.as_str(), me.tenant.as_deref()),
        ("viewer", Some("acme"))
    );
    let seen = nexus
        .list_nodes(authorized(proto::ListNodesRequest::default(), &viewer))
        .await
        .unwrap()
        .into_inner();
    assert!(
        seen.nodes.is_empty(),
        "the anchor is tenant default's: {seen:?}"
    );
    let hidden = nexus
        .get_node(authorized(
            proto::GetNodeRequest {
                node_id: anchor.node_id.clone(),
            },
            &viewer,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        hidden.code(),
        Code::NotFound,
        "not PermissionDenied: {hidden:?}"
    );
    let other = nexus
        .list_routes(authorized(
            proto::ListRoutesRequest {
                tenant: "default".into(),
                ..Default::default()
            },
            &viewer,
        ))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound, "{other:?}");
    let other = nexus
        .get_tenant(authorized(
            proto::GetTenantRequest {
                id: "default".into(),
            },
            &viewer,
        ))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound, "{other:?}");
    let own = nexus
        .list_tenants(authorized(proto::ListTenantsRequest::default(), &viewer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.tenants.len(), 1);
    assert_eq!(to_json(own.tenants[0].clone())["id"], "acme");
    let denied = nexus
        .put_route(authorized(
            proto::PutRouteRequest {
                tenant: String::new(),
                id: "v1".into(),
                route: Some(to_struct(route("v1", 1))),
            },
            &viewer,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(error_code(&denied), "forbidden");
    assert!(
        denied.message().contains("operator"),
        "names the role: {denied:?}"
    );

    // --- a node's client certificate (MIC): read-only in its tenant, as over REST --------------
    let mut as_node = NexusClient::new(mic_channel(anchor, &anchor.dir).await);
    let me = as_node
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.identity, me.role.as_str(), me.tenant.as_deref()),
        (format!("node:{}", anchor.node_id), "node", Some("default"))
    );
    let seen = as_node
        .list_nodes(proto::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.nodes.len(), 1, "its own tenant's nodes");
    let denied = as_node
        .delete_route(proto::DeleteRouteRequest {
            tenant: String::new(),
            id: "r2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // --- gRPC calls are audited like REST calls -------------------------------------------------
    let audited = |target: &'static str, result: &'static str, status: u16| {
        let fleet = &fleet;
        async move {
            let (code, audit) = rest(
                fleet,
                reqwest::Method::GET,
                "/v1/audit?action=nexus.v1.Nexus/PutRoute&limit=1000",
                None,
            )
            .await;
            code == 200
                && audit["items"].as_array().is_some_and(|entries| {
                    entries.iter().any(|e| {
                        e["target"] == target
                            && e["result"] == result
                            && e["status"] == status
                            && e["action"] == "POST /nexus.v1.Nexus/PutRoute"
                    })
                })
        }
    };
    for (target, result, status) in [
        ("/v1/routes/v1", "denied", 403),
        ("/v1/routes/g1", "ok", 200),
    ] {
        nexus_tests::wait_until(
            Duration::from_secs(10),
            &format!("an audit entry of PutRoute {target}: {result}"),
            || audited(target, result, status),
        )
        .await
        .unwrap();
    }

    // --- REST beside it: HTTP/1.1 as before, and HTTP/2 on the same connection kind ------------
    let http = nexus_tests::api_client(&anchor.dir).unwrap();
    let response = http
        .get(format!("{}/v1/nodes", anchor.api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    let mut h2 = channel.clone();
    let request = tonic::codegen::http::Request::get(format!("{}/v1/nodes", anchor.api))
        .header("authorization", format!("Bearer {key}"))
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::ready(&mut h2).await.unwrap();
    let response = tower::Service::call(response, request).await.unwrap();
    assert_eq!(response.version(), tonic::codegen::http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "REST answers JSON over h2 too"
    );
}

/// The next event of a watch, within 10 s.
async fn next(stream: &mut tonic::Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the stream goes on")
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_changes_and_says_when_it_cannot_resume() {
    let fleet = Fleet::init().await.unwrap();
    let mut nexus = NexusClient::new(tls_channel(fleet.anchor()).await);
    let key = fleet.admin_key.clone();
    let mut stream = nexus
        .watch(authorized(
            proto::WatchRequest {
                kinds: vec!["routes".into()],
                resume_after: String::new(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let (status, body) = rest(
        &fleet,
        reqwest::Method::PUT,
        "/v1/routes/w1",
        Some(route("w1", 10)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let event = next(&mut stream).await;
    assert_eq!(
        (
            event.kind.as_str(),
            event.op.as_str(),
            event.object_id.as_str()
        ),
        ("routes", "upsert", "w1"),
        "{event:?}"
    );
    assert_eq!(to_json(event.object.clone().unwrap())["priority"], 10);
    assert!(event.id.contains('-'), "<epoch>-<seq>: {event:?}");

    // Resuming after that event gets the next change and nothing before it.
    let resume = |after: &str| {
        authorized(
            proto::WatchRequest {
                kinds: vec!["routes".into()],
                resume_after: after.to_string(),
            },
            &key,
        )
    };
    let (status, _) = rest(&fleet, reqwest::Method::DELETE, "/v1/routes/w1", None).await;
    assert_eq!(status, 204);
    let mut resumed = nexus.watch(resume(&event.id)).await.unwrap().into_inner();
    let deleted = next(&mut resumed).await;
    assert_eq!(
        (deleted.op.as_str(), deleted.object_id.as_str()),
        ("delete", "w1"),
        "{deleted:?}"
    );
    // An id this node never issued: a resync, never a silent gap.
    let mut lost = nexus
        .watch(resume("00000000000000ff-3"))
        .await
        .unwrap()
        .into_inner();
    let resync = next(&mut lost).await;
    assert_eq!(resync.kind, "resync", "{resync:?}");
    assert!(!resync.resync_reason.is_empty());
    // An unknown kind is refused, naming it.
    let bad = nexus
        .watch(authorized(
            proto::WatchRequest {
                kinds: vec!["gadgets".into()],
                resume_after: String::new(),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("gadgets"), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_h2c_on_a_plain_http_node() {
    let mut fleet = Fleet::init().await.unwrap();
    // Restart the anchor serving plain HTTP (`http.insecure_plaintext`, loopback only).
    let dir = fleet.anchor().dir.clone();
    assert!(fleet.nodes[0].terminate(), "the anchor stops cleanly");
    let config = dir.join("nexus.toml");
    let mut text = std::fs::read_to_string(&config).unwrap_or_default();
    assert!(!text.contains("[http]"), "{text}");
    text.push_str("\n[http]\ninsecure_plaintext = true\n");
    std::fs::write(&config, text).unwrap();
    fleet.nodes[0] = NodeProc::run(&dir).await.unwrap();
    let api = fleet.anchor().api.clone();
    assert!(api.starts_with("http://"), "{api}");

    // Prior-knowledge h2c: gRPC on the REST port without TLS.
    let channel = Endpoint::from_shared(api.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut nexus = NexusClient::new(channel.clone());
    let nodes = nexus
        .list_nodes(authorized(
            proto::ListNodesRequest::default(),
            &fleet.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nodes.nodes.len(), 1);
    assert_eq!(nodes.nodes[0].node_id, fleet.anchor().node_id);
    let none = nexus
        .list_nodes(proto::ListNodesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let (services, _) = reflect(channel).await;
    assert!(
        services.contains(&"nexus.v1.Nexus".to_string()),
        "{services:?}"
    );
    // Older reflection clients (v1alpha) are answered too.
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let channel = Endpoint::from_shared(api.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let answer = ServerReflectionClient::new(channel)
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("v1alpha reflection did not list services");
        };
        assert!(list.service.iter().any(|s| s.name == "nexus.v1.Nexus"));
    }

    // REST over HTTP/1.1 on the same port, as before.
    let (status, body) = fleet.get(&api, "/v1/nodes").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["node_id"], fleet.anchor().node_id.as_str());

    // grpcurl, the tool people reach for, where it is installed (Debian 12 does not package
    // it, so scripts/test cannot install it; the reflection checks above cover what it uses).
    let grpcurl = std::process::Command::new("grpcurl")
        .arg("-version")
        .output();
    if grpcurl.is_err() {
        eprintln!("grpcurl is not installed: its checks did not run (the reflection client's did)");
        return;
    }
    let addr = api.strip_prefix("http://").unwrap();
    let list = std::process::Command::new("grpcurl")
        .args(["-plaintext", addr, "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(listed.lines().any(|l| l == "nexus.v1.Nexus"), "{listed}");
    let call = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-H",
            &format!("authorization: Bearer {}", fleet.admin_key),
            "-d",
            "{}",
            addr,
            "nexus.v1.Nexus/ListNodes",
        ])
        .output()
        .unwrap();
    assert!(
        call.status.success(),
        "{}",
        String::from_utf8_lossy(&call.stderr)
    );
    let answer: Value = serde_json::from_slice(&call.stdout).unwrap();
    assert_eq!(
        answer["nodes"][0]["nodeId"],
        fleet.anchor().node_id.as_str()
    );
}
