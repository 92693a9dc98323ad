//! Tenant onboarding with real processes: `nexus tenants create NAME --admin-key-out FILE`
//! creates the tenant, its CA, a first admin key and the default policies in one call; bad
//! onboarding input is refused before anything is written.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use nexus_tests::Fleet;
use serde_json::{Value, json};

async fn as_key(fleet: &Fleet, key: &str, path: &str) -> (u16, Value) {
    let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
    let response = http
        .get(format!("{}{path}", fleet.anchor().api))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn cli(fleet: &Fleet, args: &[&str]) -> std::process::Output {
    let root = fleet.anchor().dir.join("trust/root.pem");
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--api",
        &fleet.anchor().api,
        "--ca-file",
        root.to_str().unwrap(),
        "--key",
        &fleet.admin_key,
    ]);
    nexus_tests::run(&all)
}

#[tokio::test]
async fn a_tenant_is_onboarded_in_one_call_with_its_admin_ca_and_default_policies() {
    let fleet = Fleet::init().await.unwrap();
    let key_file = fleet.root.path().join("acme-admin.key");
    let out = cli(
        &fleet,
        &[
            "tenants",
            "create",
            "acme",
            "--name",
            "Acme Corp",
            "--admin-key-out",
            key_file.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("admin API key written to"), "{stdout}");
    assert!(
        !stdout.contains("nxk_"),
        "the secret is not printed: {stdout}"
    );
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only key file");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(key.starts_with("nxk_"), "{key}");

    // The key is acme's admin: it sees acme, acme's default policies, and may write routes.
    let (status, tenant) = as_key(&fleet, &key, "/v1/tenants/acme").await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["name"], "Acme Corp");
    let (status, routes) = as_key(&fleet, &key, "/v1/routes").await;
    assert_eq!(status, 200, "{routes}");
    let mut ids: Vec<&str> = routes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["default-allow-tenant", "default-deny-other-tenants"],
        "{routes}"
    );
    let deny = routes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "default-deny-other-tenants")
        .unwrap();
    assert_eq!(deny["match"]["source_tenant"], "other", "{deny}");
    assert_eq!(deny["action"]["type"], "deny", "{deny}");
    assert_eq!(deny["priority"], 1000, "{deny}");
    let (status, other) = as_key(&fleet, &key, "/v1/tenants/default").await;
    assert_eq!(status, 404, "another tenant is invisible: {other}");

    // The answer carries the tenant's CA; it chains to the fleet root through the anchor's CA.
    let (status, keys) = as_key(&fleet, &key, "/v1/keys").await;
    assert_eq!(status, 200, "{keys}");
    let roles: Vec<&str> = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["role"].as_str())
        .collect();
    assert_eq!(roles, ["admin"], "{keys}");

    // Onboarding again is refused; an existing key file is never overwritten, and is checked
    // before the anchor is asked.
    let out = cli(&fleet, &["tenants", "create", "acme"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    let out = cli(
        &fleet,
        &[
            "tenants",
            "create",
            "globex",
            "--admin-key-out",
            key_file.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the file exists"), "{stderr}");
    let (status, _) = fleet
        .get(&fleet.anchor().api, "/v1/tenants/globex")
        .await
        .unwrap();
    assert_eq!(status, 404, "nothing was created");

    // Bad onboarding input is refused before anything is written.
    let anchor = fleet.anchor().api.clone();
    for (body, what) in [
        (
            json!({"id": "globex", "name": "Globex", "oidc": {"issuer": "https://id.example"}}),
            "an OIDC provider without audience and keys",
        ),
        (
            json!({"id": "globex", "name": "Globex", "admin_key_ttl": "soon"}),
            "a key lifetime that is no duration",
        ),
        (
            json!({"id": "globex", "name": "Globex", "admin_key": "yes"}),
            "admin_key that is no boolean",
        ),
        (
            json!({"id": "globex", "name": "Globex", "admins": []}),
            "an unknown field",
        ),
    ] {
        let (status, answer) = fleet
            .post_json(&anchor, "/v1/tenants", &body)
            .await
            .unwrap();
        assert!(status == 400 || status == 422, "{what}: {status} {answer}");
        assert!(answer["error"]["message"].is_string(), "{what}: {answer}");
        let (status, _) = fleet.get(&anchor, "/v1/tenants/globex").await.unwrap();
        assert_eq!(status, 404, "{what}: nothing was created");
    }

    // Without an admin key or default policies, when asked: the answer says what was made.
    let (status, answer) = fleet
        .post_json(
            &anchor,
            "/v1/tenants",
            &json!({"id": "globex", "name": "Globex", "admin_key": false, "default_policies": false}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{answer}");
    assert!(answer["admin_key"].is_null(), "{answer}");
    assert_eq!(answer["default_policies"], json!([]), "{answer}");
    let (status, routes) = fleet
        .get(&anchor, "/v1/routes?tenant=globex")
        .await
        .unwrap();
    assert_eq!(status, 200, "{routes}");
    assert_eq!(routes["items"], json!([]), "{routes}");

    // A tenant CA was made for each, and chains to the fleet root through this anchor's CA.
    if let Some(pem) = answer["certificate_authority"].as_str() {
        let ca = fleet.root.path().join("globex-ca.pem");
        std::fs::write(&ca, pem).unwrap();
        let dir = &fleet.anchor().dir;
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.join("trust/root.pem"))
            .arg("-untrusted")
            .arg(dir.join("ca/intermediate.pem"))
            .arg(&ca)
            .output()
            .expect("openssl must be installed (scripts/test installs it)");
        assert!(
            verify.status.success(),
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    } else {
        panic!("no tenant CA in the answer: {answer}");
    }
}
