//! Join tokens: what an operator hands to a new node so it can join a fleet,
//! and the anchor-side admission decision.
//!
//! # Encoding
//!
//! `nexus-join-v1.` followed by base64url (no padding) of `payload || checksum`,
//! where `payload` is the JSON object
//!
//! ```json
//! {"v":1,"fleet":"acme","id":"<16 hex>","secret":"<base64url, 32 bytes>",
//!  "anchors":["192.0.2.1:7443"],"root":"<64 hex, SHA-256 of the root cert>"}
//! ```
//!
//! and `checksum` is the first 4 bytes of SHA-256(payload). The checksum turns a
//! mistyped or truncated token into a clear "corrupted" error instead of a
//! confusing JSON or signature failure later. It is not a security measure: the
//! secret and the root fingerprint protect the join.
//!
//! Anchors store only [`JoinToken::secret_hash`] in a [`TokenRecord`], never the secret.

use std::fmt;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every version-1 token.
pub const TOKEN_PREFIX: &str = "nexus-join-v1.";
/// Common part of all token prefixes, used to recognise tokens of other versions.
const TOKEN_FAMILY: &str = "nexus-join-v";
const CHECKSUM_LEN: usize = 4;

/// A join token: fleet, one-time credentials and where to find anchors.
///
/// `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The fleet being joined.
    pub fleet_id: String,
    /// Public token id, 16 lowercase hex characters; names the anchor's record.
    pub token_id: String,
    /// The secret proving possession of the token.
    pub secret: [u8; 32],
    /// Anchor addresses to dial (at least one).
    pub anchors: Vec<SocketAddr>,
    /// SHA-256 of the fleet root certificate: pins which anchors to trust.
    pub root_fingerprint: [u8; 32],
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("fleet_id", &self.fleet_id)
            .field("token_id", &self.token_id)
            .field("secret", &"<redacted>")
            .field("anchors", &self.anchors)
            .field("root_fingerprint", &hex::encode(self.root_fingerprint))
            .finish()
    }
}

/// The JSON payload inside an encoded token.
#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    v: u32,
    fleet: String,
    id: String,
    secret: String,
    anchors: Vec<String>,
    root: String,
}

/// Why a token string could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The string does not start with the token prefix.
    #[error(
        "this is not a Nexus join token: tokens start with \"{TOKEN_PREFIX}\"; copy the \
         whole token printed by `nexus token create`"
    )]
    NotAToken,
    /// Bad base64, checksum or JSON.
    #[error(
        "the join token is corrupted ({0}): it was truncated or altered; copy it again from \
         the output of `nexus token create`"
    )]
    Corrupted(String),
    /// A token format this version does not understand.
    #[error(
        "join token format version {0} is not supported by this version of Nexus (it \
         understands version 1): upgrade this node, or create the token with a matching version"
    )]
    UnsupportedVersion(u32),
    /// The token decodes but a field is unusable.
    #[error("the join token is invalid: {0}")]
    Invalid(String),
}

impl JoinToken {
    /// A new token with a random id and secret.
    pub fn new(fleet_id: &str, anchors: Vec<SocketAddr>, root_fingerprint: [u8; 32]) -> JoinToken {
        let id: [u8; 8] = rand::random();
        JoinToken {
            fleet_id: fleet_id.to_string(),
            token_id: hex::encode(id),
            secret: rand::random(),
            anchors,
            root_fingerprint,
        }
    }

    /// `nexus-join-v1.` + base64url-nopad(JSON payload ‖ 4-byte checksum); see the module docs.
    pub fn encode(&self) -> String {
        let payload = Payload {
            v: 1,
            fleet: self.fleet_id.clone(),
            id: self.token_id.clone(),
            secret: URL_SAFE_NO_PAD.encode(self.secret),
            anchors: self.anchors.iter().map(|a| a.to_string()).collect(),
            root: hex::encode(self.root_fingerprint),
        };
        let mut bytes =
            serde_json::to_vec(&payload).expect("serializing strings to JSON cannot fail");
        let checksum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&checksum[..CHECKSUM_LEN]);
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a token string (surrounding whitespace is ignored).
    pub fn decode(s: &str) -> Result<JoinToken, TokenError> {
        let s = s.trim();
        let Some(body) = s.strip_prefix(TOKEN_PREFIX) else {
            // Recognise "nexus-join-v2." etc. so a newer token gets a helpful error.
            if let Some(rest) = s.strip_prefix(TOKEN_FAMILY)
                && let Some((version, _)) = rest.split_once('.')
                && let Ok(v) = version.parse::<u32>()
            {
                return Err(TokenError::UnsupportedVersion(v));
            }
            return Err(TokenError::NotAToken);
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Corrupted(format!("not valid base64url: {e}")))?;
        if bytes.len() <= CHECKSUM_LEN {
            return Err(TokenError::Corrupted("it is too short".into()));
        }
        let (payload, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if Sha256::digest(payload)[..CHECKSUM_LEN] != *checksum {
            return Err(TokenError::Corrupted("checksum mismatch".into()));
        }
        // Read the version first so a future payload layout reports its version
        // rather than a field error.
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| TokenError::Corrupted(format!("payload is not JSON: {e}")))?;
        let v = value
            .get("v")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| TokenError::Invalid("the version field \"v\" is missing".into()))?;
        if v != 1 {
            return Err(TokenError::UnsupportedVersion(
                u32::try_from(v).unwrap_or(u32::MAX),
            ));
        }
        let p: Payload = serde_json::from_value(value)
            .map_err(|e| TokenError::Invalid(format!("unexpected payload: {e}")))?;

        if p.fleet.is_empty() {
            return Err(TokenError::Invalid("the fleet id is empty".into()));
        }
        if p.id.len() != 16
            || !p
                .id
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(TokenError::Invalid(format!(
                "token id {:?} is not 16 lowercase hex characters",
                p.id
            )));
        }
        let secret: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&p.secret)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| TokenError::Invalid("the secret is not 32 base64url bytes".into()))?;
        let mut root_fingerprint = [0u8; 32];
        hex::decode_to_slice(&p.root, &mut root_fingerprint).map_err(|_| {
            TokenError::Invalid(format!(
                "root fingerprint {:?} is not 64 hex characters",
                p.root
            ))
        })?;
        if p.anchors.is_empty() {
            return Err(TokenError::Invalid(
                "it lists no anchor addresses; create a token on a fleet with a reachable anchor"
                    .into(),
            ));
        }
        let anchors = p
            .anchors
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    TokenError::Invalid(format!("anchor address {a:?} is not an IP:port"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JoinToken {
            fleet_id: p.fleet,
            token_id: p.id,
            secret,
            anchors,
            root_fingerprint,
        })
    }

    /// SHA-256 of the secret: the only thing anchors store.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }
}

/// Whether `presented_secret` hashes to `stored_hash`, compared in constant time.
pub fn secret_matches(stored_hash: &[u8; 32], presented_secret: &[u8; 32]) -> bool {
    let presented: [u8; 32] = Sha256::digest(presented_secret).into();
    stored_hash.ct_eq(&presented).into()
}

/// An anchor's stored record of a token it issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token id.
    pub token_id: String,
    /// SHA-256 of the secret ([`JoinToken::secret_hash`]).
    pub secret_hash: [u8; 32],
    /// Unix seconds after which the token is refused.
    pub expires_at_unix: i64,
    /// How many nodes may join with it. There is no "unlimited" value: use `u32::MAX`.
    pub max_uses: u32,
    /// How many have joined with it so far.
    pub uses: u32,
    /// Set by an operator to withdraw the token.
    pub revoked: bool,
}

/// Why an anchor refuses a join; messages are shown to operators.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// No record for the token id.
    #[error("join token is not known to this anchor: it was never issued here or was deleted")]
    UnknownToken,
    /// The token's fleet is not the anchor's.
    #[error("join token was issued for fleet {token} but this anchor serves fleet {anchor}")]
    WrongFleet {
        /// Fleet named by the token.
        token: String,
        /// Fleet the anchor serves.
        anchor: String,
    },
    /// The secret does not hash to the stored hash.
    #[error("join token secret does not match: the token was altered")]
    BadSecret,
    /// Past `expires_at_unix`.
    #[error(
        "join token has expired (at {}): create a new one with `nexus token create`",
        crate::rfc3339(*at_unix)
    )]
    Expired {
        /// When it expired, Unix seconds.
        at_unix: i64,
    },
    /// All uses consumed.
    #[error(
        "join token was already used ({max_uses} of {max_uses} uses): create a new one with \
         `nexus token create`"
    )]
    UsedUp {
        /// The token's use limit.
        max_uses: u32,
    },
    /// Withdrawn by an operator.
    #[error("join token was revoked by an operator")]
    Revoked,
}

/// Anchor-side admission decision, pure: given the stored record and now.
///
/// Checks, in order: wrong fleet, unknown token, bad secret (constant time),
/// revoked, expired (`now_unix >= expires_at_unix`), used up (`uses >= max_uses`).
/// The secret is checked before the record's state so that someone without the
/// secret learns nothing about whether a token id is revoked, expired or used.
pub fn check_admission(
    record: Option<&TokenRecord>,
    token_fleet: &str,
    anchor_fleet: &str,
    presented_secret: &[u8; 32],
    now_unix: i64,
) -> Result<(), Refusal> {
    if token_fleet != anchor_fleet {
        return Err(Refusal::WrongFleet {
            token: token_fleet.to_string(),
            anchor: anchor_fleet.to_string(),
        });
    }
    let record = record.ok_or(Refusal::UnknownToken)?;
    if !secret_matches(&record.secret_hash, presented_secret) {
        return Err(Refusal::BadSecret);
    }
    if record.revoked {
        return Err(Refusal::Revoked);
    }
    if now_unix >= record.expires_at_unix {
        return Err(Refusal::Expired {
            at_unix: record.expires_at_unix,
        });
    }
    if record.uses >= record.max_uses {
        return Err(Refusal::UsedUp {
            max_uses: record.max_uses,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken::new(
            "acme",
            vec![
                "192.0.2.1:7443".parse().unwrap(),
                "[2001:db8::1]:7443".parse().unwrap(),
            ],
            [0xab; 32],
        )
    }

    #[test]
    fn encode_decode_roundtrip() {
        let t = token();
        assert_eq!(t.token_id.len(), 16);
        let s = t.encode();
        assert!(s.starts_with(TOKEN_PREFIX));
        assert_eq!(JoinToken::decode(&s).unwrap(), t);
        assert_eq!(JoinToken::decode(&format!("  {s}\n")).unwrap(), t);
        assert_ne!(token().secret, t.secret, "secrets must be random");
    }

    #[test]
    fn every_single_char_change_is_corrupted() {
        let s = token().encode();
        let body_start = TOKEN_PREFIX.len();
        for i in (body_start..s.len()).step_by(7) {
            let mut chars: Vec<char> = s.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let tampered: String = chars.into_iter().collect();
            let err = JoinToken::decode(&tampered).unwrap_err();
            assert!(matches!(err, TokenError::Corrupted(_)), "at {i}: {err:?}");
            assert!(err.to_string().contains("copy it again"));
        }
        let truncated = &s[..s.len() - 10];
        assert!(matches!(
            JoinToken::decode(truncated),
            Err(TokenError::Corrupted(_))
        ));
    }

    #[test]
    fn missing_prefix_and_other_versions() {
        let s = token().encode();
        let err = JoinToken::decode(&s[TOKEN_PREFIX.len()..]).unwrap_err();
        assert_eq!(err, TokenError::NotAToken);
        assert!(err.to_string().contains("nexus-join-v1."));
        assert_eq!(
            JoinToken::decode("nexus-join-v2.abc").unwrap_err(),
            TokenError::UnsupportedVersion(2)
        );
    }

    /// Encodes an arbitrary payload with a valid checksum.
    fn raw(payload: &serde_json::Value) -> String {
        let mut bytes = serde_json::to_vec(payload).unwrap();
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum[..4]);
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    #[test]
    fn field_problems_are_invalid() {
        let good = serde_json::json!({
            "v": 1, "fleet": "acme", "id": "0123456789abcdef",
            "secret": URL_SAFE_NO_PAD.encode([1u8; 32]),
            "anchors": ["192.0.2.1:7443"], "root": "ab".repeat(32),
        });
        assert!(JoinToken::decode(&raw(&good)).is_ok());
        let with = |k: &str, v: serde_json::Value| {
            let mut p = good.clone();
            p[k] = v;
            JoinToken::decode(&raw(&p)).unwrap_err()
        };
        assert_eq!(
            with("v", serde_json::json!(7)),
            TokenError::UnsupportedVersion(7)
        );
        for (k, v) in [
            ("anchors", serde_json::json!([])),
            ("anchors", serde_json::json!(["nowhere"])),
            ("root", serde_json::json!("xyz")),
            ("id", serde_json::json!("0123456789ABCDEF")),
            ("secret", serde_json::json!("c2hvcnQ")),
            ("fleet", serde_json::json!("")),
        ] {
            assert!(
                matches!(with(k, v.clone()), TokenError::Invalid(_)),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn debug_hides_secret() {
        let t = token();
        let dbg = format!("{t:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains(&hex::encode(t.secret)));
        assert!(!dbg.contains(&URL_SAFE_NO_PAD.encode(t.secret)));
        assert!(!dbg.contains(&format!("{:?}", t.secret)));
    }

    #[test]
    fn secret_hash_matches() {
        let t = token();
        assert!(secret_matches(&t.secret_hash(), &t.secret));
        assert!(!secret_matches(&t.secret_hash(), &[0u8; 32]));
    }

    fn record(t: &JoinToken) -> TokenRecord {
        TokenRecord {
            token_id: t.token_id.clone(),
            secret_hash: t.secret_hash(),
            expires_at_unix: 2_000_000_000,
            max_uses: 1,
            uses: 0,
            revoked: false,
        }
    }

    #[test]
    fn admission_refusals() {
        let t = token();
        let now = 1_900_000_000;
        let ok = record(&t);
        assert_eq!(
            check_admission(Some(&ok), "acme", "acme", &t.secret, now),
            Ok(())
        );

        let err = check_admission(Some(&ok), "acme", "prod", &t.secret, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "join token was issued for fleet acme but this anchor serves fleet prod"
        );
        assert_eq!(
            check_admission(None, "acme", "acme", &t.secret, now),
            Err(Refusal::UnknownToken)
        );
        assert_eq!(
            check_admission(Some(&ok), "acme", "acme", &[9u8; 32], now),
            Err(Refusal::BadSecret)
        );
        let revoked = TokenRecord {
            revoked: true,
            uses: 1,
            ..ok.clone()
        };
        assert_eq!(
            check_admission(Some(&revoked), "acme", "acme", &t.secret, now),
            Err(Refusal::Revoked)
        );
        let err = check_admission(Some(&ok), "acme", "acme", &t.secret, 2_000_000_000).unwrap_err();
        assert_eq!(
            err,
            Refusal::Expired {
                at_unix: 2_000_000_000
            }
        );
        assert_eq!(
            err.to_string(),
            "join token has expired (at 2033-05-18T03:33:20Z): create a new one with \
             `nexus token create`"
        );
        let used = TokenRecord { uses: 1, ..ok };
        let err = check_admission(Some(&used), "acme", "acme", &t.secret, now).unwrap_err();
        assert_eq!(err, Refusal::UsedUp { max_uses: 1 });
        assert!(err.to_string().contains("(1 of 1 uses)"));
        // A bad secret is reported before the record's state.
        assert_eq!(
            check_admission(Some(&used), "acme", "acme", &[0u8; 32], now),
            Err(Refusal::BadSecret)
        );
    }
}
