//! Cross-checks the transparency log against an independent implementation:
//! `tests/python/tlog_verify.py` (Python standard library only) re-encodes every entry,
//! recomputes every root and proof from the RFC definitions, and runs the RFC 9162 verifiers.
//! Then it must reject a tampered inclusion proof, consistency proof, entry and tree head.
//!
//! Needs `python3` on PATH; without it the test fails and says so.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nexus_ca::tlog::{LogEntry, MerkleLog, SignedTreeHead, verify_consistency, verify_inclusion};
use nexus_ca::{CertificateAuthority, MicProfile, NodeKey, Role};
use serde_json::{Value, json};

const FLEET: &str = "tlog-py";
const ISSUED: usize = 240;
const REVOKED: usize = 60;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/tlog_verify.py")
}

/// Runs the verifier on `doc`; returns (success, stdout, stderr).
fn run_verifier(doc: &Value) -> (bool, String, String) {
    let script = script();
    assert!(
        script.is_file(),
        "the verifier script {} is missing",
        script.display()
    );
    let mut child = match Command::new("python3")
        .arg(&script)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "could not run python3 ({e}): this test needs python3 on PATH to run the \
             independent verifier {}; install python3 (standard library only)",
            script.display()
        ),
    };
    let input = serde_json::to_vec(doc).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&input)
        .expect("writing to the verifier");
    let out = child.wait_with_output().expect("waiting for the verifier");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hexes(proof: &[[u8; 32]]) -> Vec<String> {
    proof.iter().map(hex::encode).collect()
}

/// A log of real MICs from one anchor intermediate, with some of them revoked, and a JSON
/// document of every claim the verifier should check.
fn build() -> Value {
    let root = CertificateAuthority::new_fleet_root(FLEET).unwrap();
    let anchor = NodeKey::generate();
    let ca = root.new_intermediate(FLEET, anchor.node_id()).unwrap();
    let issuer = ca.fingerprint();

    let mut log = MerkleLog::new();
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut t = 1_760_000_000_000u64;
    for i in 0..ISSUED + REVOKED {
        t += 17;
        let entry = if i % 5 == 4 {
            // Revoke the certificate issued a few entries ago.
            let LogEntry {
                serial, node_id, ..
            } = entries[i - 3].clone();
            LogEntry::revoked(serial, node_id, issuer, t)
        } else {
            let key = NodeKey::generate();
            let profile = MicProfile {
                fleet_id: FLEET.into(),
                node_id: key.node_id(),
                tenant: String::new(),
                site: format!("site-{}", i % 7),
                role: Role::Node,
                validity: Duration::from_secs(86_400),
            };
            let der = ca.issue_mic(&key.public_key(), &profile).unwrap();
            LogEntry::issued(der, issuer, t).unwrap()
        };
        assert_eq!(log.append_entry(&entry).unwrap(), i as u64);
        entries.push(entry);
    }
    let n = log.len();
    assert_eq!(n as usize, ISSUED + REVOKED);

    let leaves: Vec<String> = entries
        .iter()
        .map(|e| hex::encode(e.leaf_bytes().unwrap()))
        .collect();
    let roots: Vec<Value> = (0..=n)
        .map(|size| json!({"size": size, "root": hex::encode(log.root_at(size).unwrap())}))
        .collect();

    // Every leaf in the full tree, and a spread of leaves in earlier trees.
    let mut inclusion = Vec::new();
    let sizes = [
        1,
        2,
        3,
        7,
        8,
        9,
        64,
        100,
        127,
        128,
        129,
        255,
        256,
        257,
        n - 1,
    ];
    let cases = (0..n).map(|i| (i, n)).chain(
        sizes
            .iter()
            .flat_map(|&s| (0..s).step_by(3).map(move |i| (i, s))),
    );
    for (index, size) in cases {
        let proof = log.inclusion_proof(index, size).unwrap();
        let root = log.root_at(size).unwrap();
        let leaf = log.leaf_hash_at(index).unwrap();
        assert!(verify_inclusion(&leaf, index, size, &proof, &root));
        inclusion.push(json!({
            "index": index, "size": size, "root": hex::encode(root),
            "leaf_hash": hex::encode(leaf), "proof": hexes(&proof),
        }));
    }

    // Every earlier size against the full tree, and against a few intermediate sizes.
    let mut consistency = Vec::new();
    let pairs = (0..=n).map(|m| (m, n)).chain(
        sizes
            .iter()
            .flat_map(|&s| (0..=s).step_by(5).map(move |m| (m, s))),
    );
    for (first, second) in pairs {
        let proof = log.consistency_proof(first, second).unwrap();
        let (r1, r2) = (log.root_at(first).unwrap(), log.root_at(second).unwrap());
        assert!(verify_consistency(first, second, &r1, &r2, &proof));
        consistency.push(json!({
            "first": first, "second": second, "first_root": hex::encode(r1),
            "second_root": hex::encode(r2), "proof": hexes(&proof),
        }));
    }

    let sth = SignedTreeHead::sign(log.tree_head(hex::encode(issuer), t + 1), |m| {
        anchor.sign(m)
    })
    .unwrap();
    assert!(sth.verify(&anchor.public_key()));
    let mut head = serde_json::to_value(&sth).unwrap();
    head["signing_input"] = hex::encode(sth.head.signing_input().unwrap()).into();

    json!({
        "leaves": leaves,
        "entries": entries,
        "roots": roots,
        "inclusion": inclusion,
        "consistency": consistency,
        "tree_heads": [head],
    })
}

/// Flips one bit in the first hex digit of a hash string.
fn flip(v: &mut Value) {
    let s = v.as_str().unwrap();
    let first = u8::from_str_radix(&s[..1], 16).unwrap() ^ 0x1;
    *v = format!("{first:x}{}", &s[1..]).into();
}

#[test]
fn python_verifier_agrees_and_catches_tampering() {
    let doc = build();
    let (ok, stdout, stderr) = run_verifier(&doc);
    assert!(ok, "the independent verifier rejected the log:\n{stderr}");
    assert!(stdout.contains("OK: 300 leaves"), "{stdout}");
    assert!(stdout.contains("300 entries"), "{stdout}");

    // A tampered inclusion proof: one bit of one hash.
    let mut bad = doc.clone();
    let i = bad["inclusion"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["index"] == 137 && c["size"] == 300)
        .unwrap();
    flip(&mut bad["inclusion"][i]["proof"][2]);
    let (ok, _, stderr) = run_verifier(&bad);
    assert!(!ok, "a tampered inclusion proof was accepted");
    assert!(
        stderr.contains("inclusion proof of leaf 137 in size 300"),
        "{stderr}"
    );

    // A tampered consistency proof.
    let mut bad = doc.clone();
    let i = bad["consistency"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["first"] == 77 && c["second"] == 300)
        .unwrap();
    flip(&mut bad["consistency"][i]["proof"][0]);
    let (ok, _, stderr) = run_verifier(&bad);
    assert!(!ok, "a tampered consistency proof was accepted");
    assert!(
        stderr.contains("consistency proof from size 77 to 300"),
        "{stderr}"
    );

    // An entry whose JSON no longer matches its leaf (a back-dated issuance).
    let mut bad = doc.clone();
    bad["entries"][10]["timestamp_ms"] = json!(1);
    let (ok, _, stderr) = run_verifier(&bad);
    assert!(!ok, "an altered entry was accepted");
    assert!(stderr.contains("entry 10"), "{stderr}");

    // A tree head claiming a root the leaves do not produce.
    let mut bad = doc.clone();
    flip(&mut bad["tree_heads"][0]["root"]);
    let (ok, _, stderr) = run_verifier(&bad);
    assert!(!ok, "a wrong tree head root was accepted");
    assert!(stderr.contains("tree head"), "{stderr}");
}
