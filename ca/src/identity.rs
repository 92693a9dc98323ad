//! Node identity: the ed25519 key a node generates once, and the [`NodeId`]
//! derived from it.
//!
//! A node id is the first 16 bytes of SHA-256 over the raw 32-byte ed25519 public
//! key. Deriving it from the key (instead of assigning it) means nobody can claim
//! another node's id without its private key, and any certificate can be checked
//! for consistency between the id it names and the key it carries.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use sha2::{Digest, Sha256};

use crate::error::CaError;

/// Node identity: first 16 bytes of SHA-256 of the raw 32-byte ed25519 public key.
///
/// Displays (and serializes) as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// The node id belonging to a raw ed25519 public key.
    pub fn from_public_key(pk: &[u8; 32]) -> NodeId {
        let digest = Sha256::digest(pk);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        NodeId(id)
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The 32-character lowercase hex form (same as `Display`).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for NodeId {
    type Err = CaError;

    /// Parses exactly 32 hex characters (either case).
    fn from_str(s: &str) -> Result<NodeId, CaError> {
        let bad = |reason: String| CaError::BadNodeId {
            input: s.to_string(),
            reason,
        };
        if s.len() != 32 {
            return Err(bad(format!("it is {} characters long", s.len())));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(bad(format!("{c:?} is not a hex digit")));
        }
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).map_err(|e| bad(e.to_string()))?;
        Ok(NodeId(id))
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<NodeId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's ed25519 key.
///
/// `Debug` prints only the node id, never key material.
#[derive(Clone)]
pub struct NodeKey {
    signing: ed25519_dalek::SigningKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Generates a new key from the operating system's random source.
    pub fn generate() -> NodeKey {
        NodeKey {
            signing: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// A key derived from 32 seed bytes. Only for simulations and tests that need the same node
    /// ids on every run: a real node's key comes from [`NodeKey::generate`].
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        NodeKey {
            signing: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// Reads an unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) ed25519 key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<NodeKey, CaError> {
        if !pem.contains("-----BEGIN PRIVATE KEY-----") {
            return Err(CaError::BadPem {
                what: "private key",
                label: "PRIVATE KEY",
                reason: "no PRIVATE KEY block found".into(),
            });
        }
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim())
            .map_err(|e| CaError::BadKey(e.to_string()))?;
        Ok(NodeKey { signing })
    }

    /// Reads an unencrypted PKCS#8 DER ed25519 key (what decrypting a key file yields).
    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<NodeKey, CaError> {
        let signing = ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|e| CaError::BadKey(e.to_string()))?;
        Ok(NodeKey { signing })
    }

    /// The key as PKCS#8 PEM (v2, includes the public key), suitable for a 0600 file.
    pub fn to_pkcs8_pem(&self) -> String {
        // Encoding a valid in-memory ed25519 key cannot fail: the only error paths in
        // the pkcs8 crate are allocation or malformed input, neither possible here.
        self.signing
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding an ed25519 key as PKCS#8 PEM cannot fail")
            .to_string()
    }

    /// The key as PKCS#8 DER (what rustls wants).
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.signing
            .to_pkcs8_der()
            .expect("encoding an ed25519 key as PKCS#8 DER cannot fail")
            .as_bytes()
            .to_vec()
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// This key's node id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(&self.public_key())
    }

    /// An ed25519 signature over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// A PKCS#10 CSR (PEM) for this key, self-signed, subject CN = node id hex.
    pub fn csr_pem(&self) -> Result<String, CaError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, self.node_id().to_hex());
        let csr = params
            .serialize_request(&RcgenKey::new(self))
            .map_err(|e| CaError::Generate(e.to_string()))?;
        csr.pem().map_err(|e| CaError::Generate(e.to_string()))
    }
}

/// Verifies an ed25519 signature made by `public_key` over `msg`.
///
/// Returns `false` for a malformed public key as well as for a wrong signature;
/// uses strict verification so malleable signatures are refused.
pub fn verify_signature(public_key: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    vk.verify_strict(msg, &sig).is_ok()
}

/// Adapter so rcgen can sign with a [`NodeKey`] without converting key formats.
///
/// Kept private so rcgen's traits do not become part of this crate's API.
pub(crate) struct RcgenKey<'a> {
    key: &'a NodeKey,
    public: [u8; 32],
}

impl<'a> RcgenKey<'a> {
    pub(crate) fn new(key: &'a NodeKey) -> RcgenKey<'a> {
        RcgenKey {
            key,
            public: key.public_key(),
        }
    }
}

impl rcgen::PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        // For ed25519 the SPKI's subjectPublicKey BIT STRING is the raw 32-byte key.
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for RcgenKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.key.sign(msg).to_vec())
    }
}

/// A bare ed25519 public key for rcgen, used when issuing a MIC for a key we
/// only know the public half of.
pub(crate) struct RcgenPublicKey(pub(crate) [u8; 32]);

impl rcgen::PublicKeyData for RcgenPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_hex_roundtrip() {
        let key = NodeKey::generate();
        let id = key.node_id();
        let hex = id.to_string();
        assert_eq!(hex.len(), 32);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        );
        assert_eq!(format!("{id:?}"), hex);
        assert_eq!(hex.parse::<NodeId>().unwrap(), id);
        assert_eq!(hex.to_uppercase().parse::<NodeId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{hex}\""));
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
    }

    #[test]
    fn node_id_is_sha256_prefix_of_key() {
        let pk = [7u8; 32];
        let digest = Sha256::digest(pk);
        assert_eq!(NodeId::from_public_key(&pk).as_bytes(), &digest[..16]);
    }

    #[test]
    fn node_id_bad_input_is_explained() {
        let short = "abc".parse::<NodeId>().unwrap_err().to_string();
        assert!(short.contains("3 characters long"), "{short}");
        assert!(short.contains("32 hex characters"), "{short}");
        let nonhex = "zz".repeat(16).parse::<NodeId>().unwrap_err().to_string();
        assert!(nonhex.contains("'z' is not a hex digit"), "{nonhex}");
        let long = "0".repeat(34).parse::<NodeId>().unwrap_err();
        assert!(matches!(long, CaError::BadNodeId { .. }));
        assert!(serde_json::from_str::<NodeId>("\"1234\"").is_err());
    }

    #[test]
    fn key_pem_roundtrip_and_signatures() {
        let key = NodeKey::generate();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = NodeKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(back.node_id(), key.node_id());

        let sig = back.sign(b"hello");
        assert!(verify_signature(&key.public_key(), b"hello", &sig));
        assert!(!verify_signature(&key.public_key(), b"hellO", &sig));
        let other = NodeKey::generate();
        assert!(!verify_signature(&other.public_key(), b"hello", &sig));
    }

    #[test]
    fn key_pem_garbage_is_rejected() {
        assert!(matches!(
            NodeKey::from_pkcs8_pem("not a key"),
            Err(CaError::BadPem { .. })
        ));
        let broken = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            NodeKey::from_pkcs8_pem(broken),
            Err(CaError::BadKey(_))
        ));
    }
}
