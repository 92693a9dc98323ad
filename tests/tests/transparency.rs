//! The anchor's certificate transparency log end to end on a real fleet: every MIC issued and
//! revoked is in the log, the signed tree head verifies with the anchor intermediate's key (in
//! Rust and with openssl), inclusion and consistency proofs verify (in Rust and with the
//! independent Python verifier), the log survives a restart unchanged, and bad questions get
//! 400s that name the parameter.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nexus_ca::tlog::{self, EntryKind, LogEntry, verify_consistency, verify_inclusion};
use nexus_tests::{Fleet, NodeProc};
use serde_json::{Value, json};

fn serial_of(dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(dir.join("node.pem"))
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("openssl said {text}"))
        .to_ascii_lowercase()
}

fn hash(value: &Value) -> tlog::Hash {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {value}"));
    hex::decode(text).unwrap().try_into().unwrap()
}

fn hashes(value: &Value) -> Vec<tlog::Hash> {
    value.as_array().unwrap().iter().map(hash).collect()
}

/// The raw ed25519 key of a certificate: the 32 bytes after the fixed SubjectPublicKeyInfo
/// prefix of an Ed25519 key (RFC 8410), found in the DER.
fn ed25519_key_of(cert_der: &[u8]) -> [u8; 32] {
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let at = cert_der
        .windows(SPKI_PREFIX.len())
        .position(|w| w == SPKI_PREFIX)
        .expect("an ed25519 certificate");
    cert_der[at + SPKI_PREFIX.len()..at + SPKI_PREFIX.len() + 32]
        .try_into()
        .unwrap()
}

async fn get_ok(fleet: &Fleet, api: &str, path: &str) -> Value {
    let (status, body) = fleet.get(api, path).await.unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Checks a signed tree head against the intermediate's key, with nexus_ca and with openssl.
fn check_sth(sth: &Value, intermediate_pem: &Path, intermediate_der: &[u8], scratch: &Path) {
    let key = ed25519_key_of(intermediate_der);
    assert_eq!(sth["signature_algorithm"], "ed25519");
    assert_eq!(sth["public_key"], hex::encode(key));
    assert_eq!(
        sth["signer_fingerprint"],
        hex::encode(nexus_ca::sha256_fingerprint(intermediate_der))
    );
    let pem = sth["signer_certificate_pem"].as_str().unwrap();
    assert_eq!(nexus_ca::pem_to_der(pem).unwrap()[0], intermediate_der);

    let parsed: tlog::SignedTreeHead = serde_json::from_value(sth.clone()).unwrap();
    assert!(parsed.verify(&key), "the tree head does not verify: {sth}");
    let mut forged = parsed.clone();
    forged.head.size += 1;
    assert!(!forged.verify(&key));
    assert_eq!(
        hex::encode(parsed.head.signing_input().unwrap()),
        sth["signing_input"].as_str().unwrap()
    );

    // And with standard tooling, from nothing but the intermediate certificate.
    let public = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(intermediate_pem)
        .output()
        .unwrap();
    assert!(public.status.success());
    std::fs::write(scratch.join("sth-key.pem"), &public.stdout).unwrap();
    std::fs::write(
        scratch.join("sth-input.bin"),
        hex::decode(sth["signing_input"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        scratch.join("sth-signature.bin"),
        hex::decode(sth["signature"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let verified = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(scratch.join("sth-key.pem"))
        .arg("-in")
        .arg(scratch.join("sth-input.bin"))
        .arg("-sigfile")
        .arg(scratch.join("sth-signature.bin"))
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "openssl refused the tree head signature: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// Runs tests/python/tlog_verify.py on `doc`, when python3 is installed.
fn python_verify(doc: &Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tlog_verify.py");
    let child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("python3 is not installed: skipping the independent verifier");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tlog_verify.py: {said}");
    assert!(said.contains("tlog_verify: OK"), "{said}");
    eprintln!("{}", said.trim());
}

#[tokio::test]
async fn every_issue_and_revocation_is_logged_and_proven() {
    let mut fleet = Fleet::init().await.unwrap();
    for _ in 0..2 {
        let token = fleet.token(json!({})).await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        fleet.join(&token, &[]).await.unwrap();
    }
    fleet.converge(3, "online", &[]).await.unwrap();
    let anchor_dir = fleet.anchor().dir.clone();
    let mut api = fleet.anchor().api.clone();
    let intermediate_pem = anchor_dir.join("trust/intermediates.pem");
    let intermediate_der =
        nexus_ca::pem_to_der(&std::fs::read_to_string(&intermediate_pem).unwrap()).unwrap()[0]
            .clone();
    let issuer = hex::encode(nexus_ca::sha256_fingerprint(&intermediate_der));
    let scratch = fleet.root.path().to_path_buf();

    // Before the revocation: the anchor's own MIC (from `nexus init`) and the two joins.
    let before = get_ok(&fleet, &api, "/v1/transparency/sth").await;
    check_sth(&before, &intermediate_pem, &intermediate_der, &scratch);
    assert_eq!(
        before["log_id"],
        format!("nexus-tlog/{}", fleet.anchor().node_id)
    );
    let before_size = before["size"].as_u64().unwrap();
    assert!(before_size >= 3, "{before}");

    let victim = fleet.nodes[1].node_id.clone();
    let serial = serial_of(&fleet.nodes[1].dir);
    let (status, body) = fleet
        .post(&api, &format!("/v1/mics/{serial}/revoke"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    let sth = get_ok(&fleet, &api, "/v1/transparency/sth").await;
    check_sth(&sth, &intermediate_pem, &intermediate_der, &scratch);
    let size = sth["size"].as_u64().unwrap();
    assert_eq!(size, before_size + 1, "one revocation, one entry");
    let root = hash(&sth["root"]);

    // The entries: each leaf decodes to what the JSON says and hashes to its leaf hash.
    let page = get_ok(
        &fleet,
        &api,
        &format!("/v1/transparency/entries?start=0&end={size}"),
    )
    .await;
    assert_eq!(page["tree_size"], size);
    assert_eq!(page["next_start"], Value::Null);
    let entries = page["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len() as u64, size);
    let mut leaves = Vec::new();
    let mut issued = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry["index"], i as u64);
        let leaf = STANDARD.decode(entry["leaf"].as_str().unwrap()).unwrap();
        assert_eq!(tlog::leaf_hash(&leaf), hash(&entry["leaf_hash"]));
        let decoded = LogEntry::from_leaf_bytes(&leaf).unwrap();
        assert_eq!(decoded.serial_hex(), entry["serial"].as_str().unwrap());
        assert_eq!(
            decoded.node_id.to_string(),
            entry["node_id"].as_str().unwrap()
        );
        assert_eq!(
            decoded.timestamp_ms,
            entry["timestamp_ms"].as_u64().unwrap()
        );
        assert_eq!(entry["issuer"], issuer);
        match &decoded.kind {
            EntryKind::Issued { certificate_der } => {
                assert_eq!(entry["kind"], "issued");
                assert_eq!(
                    STANDARD.encode(certificate_der),
                    entry["certificate_der"].as_str().unwrap()
                );
                assert!(issued.insert(decoded.serial_hex()), "logged twice: {entry}");
            }
            EntryKind::Revoked => {
                assert_eq!(entry["kind"], "revoked");
                assert!(entry.get("certificate_der").is_none());
            }
        }
        leaves.push(leaf);
    }
    // Exactly the certificates the anchor recorded, each once.
    let mics = get_ok(&fleet, &api, "/v1/mics?limit=1000").await;
    let recorded: BTreeSet<String> = mics["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["serial"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(issued, recorded);
    let last = entries.last().unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["serial"].as_str()),
        (Some("revoked"), Some(serial.as_str()))
    );
    assert_eq!(last["node_id"], victim);

    // Inclusion proofs of every entry, by leaf hash and by serial, now and at the older size.
    let mut inclusion_claims = Vec::new();
    for entry in &entries {
        let index = entry["index"].as_u64().unwrap();
        let leaf_hash = hash(&entry["leaf_hash"]);
        let proof = get_ok(
            &fleet,
            &api,
            &format!(
                "/v1/transparency/proof/inclusion?leaf_hash={}",
                entry["leaf_hash"].as_str().unwrap()
            ),
        )
        .await;
        assert_eq!(proof["leaf_index"], index);
        assert_eq!(proof["tree_size"], size);
        assert_eq!(hash(&proof["root"]), root);
        let path = hashes(&proof["audit_path"]);
        assert!(verify_inclusion(&leaf_hash, index, size, &path, &root));
        assert!(!verify_inclusion(&leaf_hash, index ^ 1, size, &path, &root));
        inclusion_claims.push(json!({
            "index": index, "size": size, "root": proof["root"],
            "leaf_hash": entry["leaf_hash"], "proof": proof["audit_path"],
        }));

        let by_serial = get_ok(
            &fleet,
            &api,
            &format!(
                "/v1/transparency/proof/inclusion?serial={}&kind={}",
                entry["serial"].as_str().unwrap(),
                entry["kind"].as_str().unwrap()
            ),
        )
        .await;
        assert_eq!(by_serial, proof);

        if index < before_size {
            let old = get_ok(
                &fleet,
                &api,
                &format!(
                    "/v1/transparency/proof/inclusion?leaf_hash={}&size={before_size}",
                    entry["leaf_hash"].as_str().unwrap()
                ),
            )
            .await;
            let path = hashes(&old["audit_path"]);
            assert!(verify_inclusion(
                &leaf_hash,
                index,
                before_size,
                &path,
                &hash(&before["root"])
            ));
            inclusion_claims.push(json!({
                "index": index, "size": before_size, "root": old["root"],
                "leaf_hash": entry["leaf_hash"], "proof": old["audit_path"],
            }));
        }
    }

    // Consistency from the head before the revocation to now, and from every size.
    let proof = get_ok(
        &fleet,
        &api,
        &format!("/v1/transparency/proof/consistency?first={before_size}&second={size}"),
    )
    .await;
    assert_eq!(proof["first_root"], before["root"]);
    assert_eq!(proof["second_root"], sth["root"]);
    assert!(verify_consistency(
        before_size,
        size,
        &hash(&before["root"]),
        &root,
        &hashes(&proof["proof"])
    ));
    let mut consistency_claims = Vec::new();
    let mut roots = Vec::new();
    for first in 0..=size {
        let proof = get_ok(
            &fleet,
            &api,
            &format!("/v1/transparency/proof/consistency?first={first}"),
        )
        .await;
        assert_eq!(proof["second"], size);
        assert!(verify_consistency(
            first,
            size,
            &hash(&proof["first_root"]),
            &root,
            &hashes(&proof["proof"])
        ));
        roots.push(json!({"size": first, "root": proof["first_root"]}));
        consistency_claims.push(proof);
    }

    // The same, checked by the independent Python verifier (recomputed from the leaves).
    python_verify(&json!({
        "leaves": leaves.iter().map(hex::encode).collect::<Vec<_>>(),
        "entries": entries,
        "roots": roots,
        "inclusion": inclusion_claims,
        "consistency": consistency_claims,
        "tree_heads": [before, sth],
    }));

    // Lookups by serial, node id and issuer.
    let by_serial = get_ok(
        &fleet,
        &api,
        &format!("/v1/transparency/entries?serial={serial}"),
    )
    .await;
    let kinds: Vec<&str> = by_serial["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["issued", "revoked"]);
    let by_node = get_ok(
        &fleet,
        &api,
        &format!("/v1/transparency/entries?node_id={victim}"),
    )
    .await;
    assert!(
        by_node["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["node_id"] == victim)
    );
    assert_eq!(by_node["entries"].as_array().unwrap().len(), 2);
    let by_issuer = get_ok(
        &fleet,
        &api,
        &format!("/v1/transparency/entries?issuer={issuer}"),
    )
    .await;
    assert_eq!(by_issuer["entries"].as_array().unwrap().len() as u64, size);
    let paged = get_ok(&fleet, &api, "/v1/transparency/entries?start=1&end=3").await;
    assert_eq!(paged["entries"].as_array().unwrap().len(), 2);
    assert_eq!(paged["entries"][0], entries[1]);

    // Questions the log cannot answer: 400 naming the parameter, 404 for what it does not hold.
    let beyond = size + 1;
    for (path, param) in [
        ("/v1/transparency/entries?start=x".to_string(), "start"),
        ("/v1/transparency/entries?start=3&end=2".to_string(), "end"),
        (format!("/v1/transparency/entries?start={beyond}"), "start"),
        ("/v1/transparency/entries?serial=zz".to_string(), "serial"),
        ("/v1/transparency/entries?node_id=12".to_string(), "node_id"),
        ("/v1/transparency/entries?issuer=ab".to_string(), "issuer"),
        ("/v1/transparency/entries?limit=5".to_string(), "limit"),
        (
            format!("/v1/transparency/entries?serial={serial}&node_id={victim}"),
            "serial",
        ),
        ("/v1/transparency/proof/inclusion".to_string(), "serial"),
        (
            "/v1/transparency/proof/inclusion?leaf_hash=abc".to_string(),
            "leaf_hash",
        ),
        (
            format!("/v1/transparency/proof/inclusion?serial={serial}&kind=lost"),
            "kind",
        ),
        (
            format!("/v1/transparency/proof/inclusion?serial={serial}&size={beyond}"),
            "size",
        ),
        (
            format!(
                "/v1/transparency/proof/inclusion?serial={serial}&kind=revoked&size={before_size}"
            ),
            "size",
        ),
        (
            "/v1/transparency/proof/inclusion?serial=01&size=-1".to_string(),
            "size",
        ),
        ("/v1/transparency/proof/consistency".to_string(), "first"),
        (
            "/v1/transparency/proof/consistency?first=2&second=1".to_string(),
            "first",
        ),
        (
            format!("/v1/transparency/proof/consistency?first=1&second={beyond}"),
            "second",
        ),
    ] {
        let (status, body) = fleet.get(&api, &path).await.unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(param), "{path}: {message}");
    }
    for path in [
        "/v1/transparency/proof/inclusion?serial=abcdef".to_string(),
        format!(
            "/v1/transparency/proof/inclusion?leaf_hash={}",
            "ab".repeat(32)
        ),
    ] {
        let (status, body) = fleet.get(&api, &path).await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
    }

    // Readable by any authenticated caller, by nobody else; kept by anchors only.
    let anonymous = nexus_tests::api_client(&anchor_dir)
        .unwrap()
        .get(format!("{api}/v1/transparency/sth"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let (status, body) = fleet
        .get(&fleet.nodes[2].api, "/v1/transparency/sth")
        .await
        .unwrap();
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["error"]["code"], "not_an_anchor");

    // A restart loads the same log: same size and root, consistent with the earlier heads.
    assert!(fleet.nodes[0].terminate(), "the anchor stops cleanly");
    fleet.nodes[0] = NodeProc::run(&anchor_dir).await.unwrap();
    api = fleet.anchor().api.clone();
    let restarted = get_ok(&fleet, &api, "/v1/transparency/sth").await;
    check_sth(&restarted, &intermediate_pem, &intermediate_der, &scratch);
    assert_eq!(restarted["size"], size);
    assert_eq!(restarted["root"], sth["root"]);
    let proof = get_ok(
        &fleet,
        &api,
        &format!("/v1/transparency/proof/consistency?first={before_size}"),
    )
    .await;
    assert!(verify_consistency(
        before_size,
        size,
        &hash(&before["root"]),
        &hash(&restarted["root"]),
        &hashes(&proof["proof"])
    ));
    let after_restart = get_ok(&fleet, &api, "/v1/transparency/entries").await;
    assert_eq!(after_restart["entries"].as_array().unwrap(), &entries);
}
