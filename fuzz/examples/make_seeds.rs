//! Writes the seed corpus, `corpus/<target>/seed-*`: one valid input or a few per fuzz target,
//! so fuzzing starts from inputs that get past the outer checks.
//!
//! Run once from `fuzz/` with `cargo run --example make-seeds` and commit the files; run again
//! when a format changes. MICs and CRLs are signed by [`nexus_fuzz::Fleet`]'s fixed keys, so
//! they verify against the trust store each fuzzing process builds.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use nexus_ca::tlog::LogEntry;
use nexus_ca::{JoinToken, MicProfile, RevokeReason, Revoked, Role, der_to_pem};
use nexus_fuzz::{FLEET_ID, Fleet, fixed_key};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).expect("creating the corpus directory");
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("writing a seed");
    };
    let fleet = Fleet::new();
    let (trust, now) = nexus_fuzz::trust();

    // csr: the PEM an anchor receives, and its DER (the target wraps raw bytes in PEM).
    let node = fixed_key(4);
    let csr_pem = node.csr_pem().expect("CSR");
    let csr_der = pem_body(&csr_pem);
    assert_eq!(
        nexus_ca::public_key_from_csr(&nexus_fuzz::csr_pem_around(&csr_der)).ok(),
        Some(node.public_key())
    );
    write("csr", "node.pem", csr_pem.as_bytes());
    write("csr", "node.der", &csr_der);

    // mic: a MIC as DER and as PEM, and the anchor CA (a certificate that is not a MIC).
    let profile = MicProfile {
        fleet_id: FLEET_ID.into(),
        node_id: node.node_id(),
        tenant: "default".into(),
        site: "lab-1".into(),
        role: Role::Node,
        validity: 4 * YEAR,
    };
    let mic = fleet
        .anchor
        .issue_mic(&node.public_key(), &profile)
        .expect("MIC");
    let verified = trust.verify_mic(&mic, *now).expect("the seed MIC verifies");
    write("mic", "mic.der", &mic);
    write("mic", "mic.pem", der_to_pem(&mic).as_bytes());
    write("mic", "anchor-ca.der", fleet.anchor.cert_der());

    // crl: an empty list and one revoking two serials.
    let empty = fleet.anchor.issue_crl(1, &[], 4 * YEAR).expect("empty CRL");
    let revoked = [
        Revoked {
            serial_hex: verified.serial_hex.clone(),
            revoked_at_unix: *now,
            reason: RevokeReason::KeyCompromise,
        },
        Revoked {
            serial_hex: "01ff".into(),
            revoked_at_unix: *now,
            reason: RevokeReason::Superseded,
        },
    ];
    let two = fleet.anchor.issue_crl(2, &revoked, 4 * YEAR).expect("CRL");
    for der in [&empty, &two] {
        nexus_ca::verify_crl(trust, der).expect("the seed CRL verifies");
    }
    write("crl", "empty.der", &empty);
    write("crl", "revoked.der", &two);

    // join_token: token texts, and a bare payload (the target wraps raw bytes in a token).
    let anchors: Vec<SocketAddr> = vec!["192.0.2.1:7443".parse().unwrap()];
    let token = JoinToken::new(FLEET_ID, anchors, fleet.root.fingerprint());
    write("join_token", "v4.txt", token.encode().as_bytes());
    let anchors: Vec<SocketAddr> = vec![
        "192.0.2.1:7443".parse().unwrap(),
        "[2001:db8::1]:7443".parse().unwrap(),
    ];
    let token = JoinToken::new(FLEET_ID, anchors, fleet.root.fingerprint());
    let encoded = token.encode();
    write("join_token", "v6.txt", encoded.as_bytes());
    let body = URL_SAFE_NO_PAD
        .decode(encoded.strip_prefix(nexus_ca::TOKEN_PREFIX).unwrap())
        .unwrap();
    write("join_token", "payload.json", &body[..body.len() - 4]);

    // tlog_leaf: an issued and a revoked entry.
    let issuer = fleet.anchor.fingerprint();
    let issued = LogEntry::issued(mic, issuer, 1_700_000_000_000).expect("log entry");
    let serial = hex_decode(&verified.serial_hex);
    let revoked = LogEntry::revoked(serial, node.node_id(), issuer, 1_700_000_001_000);
    for (name, entry) in [("issued.bin", issued), ("revoked.bin", revoked)] {
        let leaf = entry.leaf_bytes().expect("leaf");
        assert_eq!(
            LogEntry::from_leaf_bytes(&leaf).expect("leaf decodes"),
            entry
        );
        write("tlog_leaf", name, &leaf);
    }
    println!("seeds written under {}", corpus.display());
}

/// The DER inside a single-block PEM document.
fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).expect("PEM body is base64")
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}
