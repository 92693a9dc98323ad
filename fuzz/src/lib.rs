//! Shared pieces of the Nexus Cloud fuzz targets (`fuzz_targets/`) and the seed generator
//! (`examples/make_seeds.rs`).
//!
//! * [`Fleet`] / [`trust`]: a fleet whose CA keys are fixed, so seeds generated once still
//!   verify against the trust store every fuzzing process builds for itself.
//! * [`csr_pem_around`], [`join_token_around`]: carry arbitrary bytes past an outer encoding
//!   (PEM, the token's base64 and checksum) so the fuzzer reaches the parser behind it.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use nexus_ca::{CertificateAuthority, NodeKey, TOKEN_PREFIX, TrustStore};
use sha2::{Digest, Sha256};

/// The fleet id of the fuzzing fleet.
pub const FLEET_ID: &str = "fuzz-fleet";

/// An ed25519 PKCS#8 v1 private key is this DER prefix followed by the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A well-known key derived from `seed`: for fuzzing only, never for a real fleet.
pub fn fixed_key(seed: u8) -> NodeKey {
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(&[seed; 32]);
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    );
    NodeKey::from_pkcs8_pem(&pem).expect("a 32-byte seed is a valid ed25519 key")
}

/// A fleet root and one anchor intermediate.
///
/// The certificates are freshly generated (new validity window and serials every time), but
/// the keys and subject names are fixed, and that is all chain and CRL verification look at:
/// a MIC or CRL signed by one `Fleet::new()` verifies against any other's trust store.
pub struct Fleet {
    /// The self-signed fleet root.
    pub root: CertificateAuthority,
    /// The anchor intermediate, signed by the root; it issues MICs and CRLs.
    pub anchor: CertificateAuthority,
}

impl Fleet {
    /// Generates the fleet's certificates from the fixed keys.
    pub fn new() -> Fleet {
        let root = CertificateAuthority::new_fleet_root_with(FLEET_ID, Arc::new(fixed_key(1)))
            .expect("generating the fuzz fleet root");
        let anchor = root
            .new_intermediate_with(FLEET_ID, fixed_key(3).node_id(), Arc::new(fixed_key(2)))
            .expect("generating the fuzz anchor intermediate");
        Fleet { root, anchor }
    }

    /// The trust store a node of this fleet holds.
    pub fn trust_store(&self) -> TrustStore {
        TrustStore::new(
            self.root.cert_der().to_vec(),
            vec![self.anchor.cert_der().to_vec()],
        )
        .expect("the fuzz fleet's own trust store")
    }
}

impl Default for Fleet {
    fn default() -> Fleet {
        Fleet::new()
    }
}

/// The trust store of this process's [`Fleet`], built on first use, and the Unix time it was
/// built at (the time to verify at: the fresh certificates are valid then).
pub fn trust() -> &'static (TrustStore, i64) {
    static TRUST: OnceLock<(TrustStore, i64)> = OnceLock::new();
    TRUST.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs();
        (
            Fleet::new().trust_store(),
            i64::try_from(now).expect("time fits i64"),
        )
    })
}

/// `der` as a PEM `CERTIFICATE REQUEST` block, so the DER parser behind the PEM one sees it.
pub fn csr_pem_around(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        STANDARD.encode(der)
    )
}

/// `payload` encoded as a version-1 join token with a correct checksum, so the JSON parsing
/// and field checks behind the base64 and checksum see it.
pub fn join_token_around(payload: &[u8]) -> String {
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(&Sha256::digest(payload)[..4]);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}
