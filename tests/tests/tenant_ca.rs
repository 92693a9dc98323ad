//! Tenant CAs and the node quota at join, with real processes: a node joined into a tenant gets a
//! MIC its anchor's CA for that tenant issued (root → anchor CA → tenant CA → MIC, checked with
//! `openssl verify`), every node trusts it and sees it online, and it keeps working across
//! restarts; a join over the tenant's `quotas.max_nodes` is refused at the anchor with a message
//! that says what to do, while other tenants still join.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nexus_tests::{ANY_PORTS, Fleet, NodeProc, wait_until};
use serde_json::{Value, json};

async fn token_for(fleet: &Fleet, body: Value) -> String {
    fleet.token(body).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `openssl verify -CAfile <root> -untrusted <untrusted…> <mic>`: (accepted, output).
fn openssl_verify(
    root: &Path,
    untrusted: &[PathBuf],
    mic: &Path,
    scratch: &Path,
) -> (bool, String) {
    let bundle = scratch.join("untrusted.pem");
    let text: String = untrusted
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    std::fs::write(&bundle, text).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(&bundle)
        .arg(mic)
        .output()
        .unwrap_or_else(|e| panic!("this test needs openssl (apt-get install openssl): {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.contains(": OK"), said)
}

fn first_cert(path: &Path) -> Vec<u8> {
    nexus_ca::pem_to_der(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .swap_remove(0)
}

/// Whether the PEM file at `path` holds the certificate `der`.
fn holds(path: &Path, der: &[u8]) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|pem| nexus_ca::pem_to_der(&pem).ok())
        .is_some_and(|ders| ders.iter().any(|d| d == der))
}

/// Runs `nexus join TOKEN --no-run` into `dir`; returns (joined, stderr).
fn try_join(dir: &Path, token: &str) -> (bool, String) {
    let mut args = vec![
        "join",
        token,
        "--data-dir",
        dir.to_str().unwrap(),
        "--no-run",
    ];
    args.extend(ANY_PORTS);
    let out = nexus_tests::run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "nexus panicked: {stderr}");
    (out.status.success(), stderr)
}

/// Sets tenant `tenant`'s `quotas.max_nodes` with `PATCH /v1/tenants/{tenant}` on the anchor.
async fn set_max_nodes(fleet: &Fleet, tenant: &str, max_nodes: u64) {
    let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
    let response = http
        .patch(format!("{}/v1/tenants/{tenant}", fleet.anchor().api))
        .bearer_auth(&fleet.admin_key)
        .json(&json!({"quotas": {"max_nodes": max_nodes}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "PATCH /v1/tenants/{tenant}: {body}");
    assert_eq!(body["quotas"]["max_nodes"], max_nodes, "{body}");
}

#[tokio::test]
async fn a_tenant_node_chains_through_its_tenant_ca_and_is_a_full_member() {
    let mut fleet = Fleet::init().await.unwrap();
    let default_token = token_for(&fleet, json!({})).await;
    fleet.join(&default_token, &[]).await.unwrap();
    let acme_token = token_for(&fleet, json!({"tenant": "acme", "uses": 5})).await;
    fleet.join(&acme_token, &[]).await.unwrap();
    let anchor_dir = fleet.anchor().dir.clone();
    let default_dir = fleet.nodes[1].dir.clone();
    let acme_dir = fleet.nodes[2].dir.clone();
    let scratch = tempfile::tempdir().unwrap();

    // The anchor made its CA for acme and keeps it in its data directory.
    let tenant_ca_pem = anchor_dir.join("ca/tenants/acme.pem");
    assert!(tenant_ca_pem.is_file(), "no CA for acme on the anchor");
    let key = anchor_dir.join("ca/tenants/acme.key");
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.contains("PRIVATE KEY"), "{}", key.display());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let tenant_ca = first_cert(&tenant_ca_pem);

    // root → anchor CA → tenant CA → MIC, as openssl sees it; the anchor CA alone is not enough.
    let root = anchor_dir.join("trust/root.pem");
    let anchor_ca = anchor_dir.join("ca/intermediate.pem");
    let mic = acme_dir.join("node.pem");
    let (ok, said) = openssl_verify(
        &root,
        &[anchor_ca.clone(), tenant_ca_pem.clone()],
        &mic,
        scratch.path(),
    );
    assert!(ok, "openssl verify through the tenant CA: {said}");
    let (ok, said) = openssl_verify(
        &root,
        std::slice::from_ref(&anchor_ca),
        &mic,
        scratch.path(),
    );
    assert!(
        !ok,
        "the MIC must come from the tenant CA, not the anchor CA: {said}"
    );
    let facts = nexus_ca::read_mic(&first_cert(&mic)).unwrap();
    assert_eq!(facts.tenant, "acme");
    // The default tenant's node is still certified by the anchor CA itself.
    let (ok, said) = openssl_verify(
        &root,
        std::slice::from_ref(&anchor_ca),
        &default_dir.join("node.pem"),
        scratch.path(),
    );
    assert!(ok, "default tenant node: {said}");
    let (ok, said) = openssl_verify(
        &root,
        &[anchor_ca],
        &anchor_dir.join("node.pem"),
        scratch.path(),
    );
    assert!(ok, "the anchor's own MIC: {said}");

    // The joined node got the tenant CA with its admission and keeps it apart from anchor CAs.
    assert!(holds(&acme_dir.join("trust/tenant-cas.pem"), &tenant_ca));
    assert!(!holds(
        &acme_dir.join("trust/intermediates.pem"),
        &tenant_ca
    ));

    // Every node sees the acme node online, and it has the fleet document.
    fleet.converge(3, "online", &[]).await.unwrap();
    wait_until(
        Duration::from_secs(20),
        "the fleet document on all three nodes",
        || fleet.config_converged("fleet", 3),
    )
    .await
    .unwrap();
    // The default node learned the tenant CA from the fleet document and stored it.
    wait_until(
        Duration::from_secs(10),
        "the default node trusts acme's CA",
        || async { holds(&default_dir.join("trust/tenant-cas.pem"), &tenant_ca) },
    )
    .await
    .unwrap();

    // What the acme node writes (signed under its tenant-CA MIC) is accepted by the anchor.
    let acme_api = fleet.nodes[2].api.clone();
    let route = json!({
        "id": "a1",
        "name": "route a1",
        "tenant_id": "",
        "priority": 1,
        "match": {"source_node_ids": [], "dest_capabilities": [], "stream_modes": ["RO"], "message_types": [7]},
        "action": {"type": "allow"},
        "enabled": true,
        "created_at": 0
    });
    wait_until(
        Duration::from_secs(15),
        "the acme node writes a route",
        || async {
            fleet
                .post_json(&acme_api, "/v1/routes", &route)
                .await
                .is_ok_and(|(status, _)| status == 201)
        },
    )
    .await
    .unwrap();
    let anchor_api = fleet.anchor().api.clone();
    wait_until(
        Duration::from_secs(15),
        "the anchor holds acme's route",
        || async {
            fleet
                .get(&anchor_api, "/v1/routes/a1?tenant=acme")
                .await
                .is_ok_and(|(status, _)| status == 200)
        },
    )
    .await
    .unwrap();

    // Restarts: the acme node checks its MIC against the stored tenant CA; the anchor reloads
    // its CA for acme (not a new one) and issues the next acme node from it.
    fleet.nodes[2].terminate();
    fleet.nodes[2] = NodeProc::run(&acme_dir).await.unwrap();
    fleet.nodes[0].terminate();
    fleet.nodes[0] = NodeProc::run(&anchor_dir).await.unwrap();
    assert_eq!(
        first_cert(&tenant_ca_pem),
        tenant_ca,
        "the anchor made a second acme CA"
    );
    fleet.converge(3, "online", &[]).await.unwrap();
    // The restarted anchor listens on new ports: a new token names them.
    let acme_token = token_for(&fleet, json!({"tenant": "acme"})).await;
    fleet.join(&acme_token, &[]).await.unwrap();
    let second = fleet.nodes[3].dir.join("node.pem");
    let (ok, said) = openssl_verify(
        &root,
        &[anchor_dir.join("ca/intermediate.pem"), tenant_ca_pem],
        &second,
        scratch.path(),
    );
    assert!(ok, "second acme node: {said}");
    fleet.converge(4, "online", &[]).await.unwrap();
}

#[tokio::test]
async fn a_join_over_the_tenants_node_quota_is_refused_at_the_anchor() {
    let mut fleet = Fleet::init().await.unwrap();
    let acme_token = token_for(&fleet, json!({"tenant": "acme", "uses": 5})).await;
    // The token registered acme in the fleet configuration; now give it room for one node.
    set_max_nodes(&fleet, "acme", 1).await;
    fleet.join(&acme_token, &[]).await.unwrap();

    let refused_dir = fleet.root.path().join("refused");
    let (ok, stderr) = try_join(&refused_dir, &acme_token);
    assert!(!ok, "a second acme node must be refused");
    assert!(stderr.contains("quota_exceeded"), "{stderr}");
    assert!(
        stderr.contains(
            "tenant acme already has 1 node, its quota (max_nodes 1): raise quotas.max_nodes \
             (PATCH /v1/tenants/acme) or decommission a node"
        ),
        "{stderr}"
    );
    assert!(
        !refused_dir.join("node.key").exists() && !refused_dir.join("nexus.db").exists(),
        "nothing may be written on refusal"
    );

    // Another tenant is not limited by acme's quota.
    let globex_token = token_for(&fleet, json!({"tenant": "globex"})).await;
    fleet.join(&globex_token, &[]).await.unwrap();
    assert_eq!(
        nexus_ca::read_mic(&first_cert(&fleet.nodes[2].dir.join("node.pem")))
            .unwrap()
            .tenant,
        "globex"
    );

    // With the quota raised, acme joins again; the refused attempt used none of the token.
    set_max_nodes(&fleet, "acme", 2).await;
    fleet.join(&acme_token, &[]).await.unwrap();
    let (ok, stderr) = try_join(&fleet.root.path().join("third"), &acme_token);
    assert!(!ok && stderr.contains("already has 2 nodes"), "{stderr}");
    let (_, tokens) = fleet.get(&fleet.anchor().api, "/v1/tokens").await.unwrap();
    let uses: Vec<u64> = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uses"].as_u64().unwrap())
        .collect();
    assert!(uses.contains(&2), "acme's token was used twice: {tokens}");
    fleet.converge(4, "online", &[]).await.unwrap();
}

/// Where Debian and Ubuntu put the SoftHSM2 module.
const SOFTHSM_MODULES: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Joins an acme node and checks its MIC with openssl through the anchor's acme CA.
async fn join_acme_and_verify(fleet: &mut Fleet) {
    let token = token_for(fleet, json!({"tenant": "acme"})).await;
    let node_dir = fleet.join(&token, &[]).await.unwrap().dir.clone();
    let anchor_dir = fleet.anchor().dir.clone();
    let scratch = tempfile::tempdir().unwrap();
    let (ok, said) = openssl_verify(
        &anchor_dir.join("trust/root.pem"),
        &[
            anchor_dir.join("ca/intermediate.pem"),
            anchor_dir.join("ca/tenants/acme.pem"),
        ],
        &node_dir.join("node.pem"),
        scratch.path(),
    );
    assert!(ok, "openssl verify: {said}");
}

#[tokio::test]
async fn tenant_ca_keys_follow_the_anchor_ca_key_backend() {
    // Key files encrypted with the anchor's passphrase.
    let secrets = tempfile::tempdir().unwrap();
    let pass_file = secrets.path().join("ca.pass");
    write_private(&pass_file, "a long CA passphrase\n");
    let mut fleet = Fleet::init_with(&["--key-passphrase-file", pass_file.to_str().unwrap()])
        .await
        .unwrap();
    join_acme_and_verify(&mut fleet).await;
    let key = std::fs::read_to_string(fleet.anchor().dir.join("ca/tenants/acme.key")).unwrap();
    assert!(
        key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "the tenant CA key must be encrypted like the anchor's: {key}"
    );

    // A PKCS#11 token (SoftHSM2): the tenant CA key is generated in it, no key file is written.
    let module = SOFTHSM_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "SoftHSM2 is not installed (no module at {}): apt-get install softhsm2",
                SOFTHSM_MODULES.join(", ")
            )
        });
    let hsm = tempfile::tempdir().unwrap();
    let tokens = hsm.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = hsm.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    nexus_tests::set_nexus_env("SOFTHSM2_CONF", &conf);
    let pin = "pin-tenant-ca-4711";
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "nexus-tenants",
            "--pin",
            pin,
            "--so-pin",
            "so-pin-tenant",
        ])
        .output()
        .expect("softhsm2-util (apt-get install softhsm2)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pin_file = hsm.path().join("user.pin");
    write_private(&pin_file, &format!("{pin}\n"));
    let mut fleet = Fleet::init_with(&[
        "--hsm-module",
        module.to_str().unwrap(),
        "--hsm-token",
        "nexus-tenants",
        "--hsm-pin-file",
        pin_file.to_str().unwrap(),
    ])
    .await
    .unwrap();
    join_acme_and_verify(&mut fleet).await;
    let tenants_dir = fleet.anchor().dir.join("ca/tenants");
    let files: Vec<String> = std::fs::read_dir(&tenants_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(files, ["acme.pem"], "no key file with the PKCS#11 backend");
}
