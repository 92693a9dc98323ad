//! Trust for Nexus Cloud: node identity, machine identity certificates (MICs),
//! chain verification, TLS configurations for joining, and join tokens.
//!
//! Modules:
//!
//! * [`identity`]: [`NodeId`] (derived from the ed25519 public key) and [`NodeKey`],
//!   signatures and CSRs.
//! * [`cert`]: the fleet root, anchor intermediate and tenant CAs ([`CertificateAuthority`]),
//!   MIC issuance and layout, PEM helpers, CSR verification, [`read_mic`].
//! * [`keys`]: where CA keys live, behind [`CaSigner`]: in memory, a 0600 PKCS#8 file
//!   ([`FileKey`], optionally passphrase-encrypted) or a PKCS#11 token ([`Pkcs11Key`]).
//! * [`crl`]: CRLs signed by anchor intermediates and the [`RevocationSet`] a node enforces.
//! * [`trust`]: [`TrustStore`], the root, anchor intermediates and tenant CAs a node trusts,
//!   and webpki-based MIC verification (a tenant CA's MICs must name its tenant).
//! * [`tls`]: rustls 0.23 configurations (ring provider, TLS 1.3) for an anchor's
//!   endpoint and for a joining node that only knows the root fingerprint.
//! * [`peer`]: mutual TLS between fleet members and for the HTTPS API ([`FleetTrust`],
//!   [`Credentials`]).
//! * [`token`]: [`JoinToken`] encoding and the anchor's [`check_admission`] decision.
//! * [`error`]: [`CaError`], the error type for everything but tokens.
//!
//! Everything public is re-exported at the crate root.

/// The handshake-signature methods every Nexus certificate verifier shares: ed25519 only (all
/// Nexus keys are), checked with the provider's algorithms in `self.algorithms`. `$who` names
/// the signing side in the error. Advertising only ed25519 makes a misconfigured peer fail at
/// negotiation instead of after the chain check; the TLS 1.2 method is unreachable with the
/// TLS 1.3-only configurations but verifies properly rather than accept anything.
macro_rules! ed25519_handshake_signatures {
    ($who:literal) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            if dss.scheme != rustls::SignatureScheme::ED25519 {
                return Err(rustls::Error::General(format!(
                    "the {} signed the handshake with {:?}; Nexus requires ed25519",
                    $who, dss.scheme
                )));
            }
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            vec![rustls::SignatureScheme::ED25519]
        }
    };
}

pub mod cert;
pub mod crl;
pub mod csr;
pub mod error;
pub mod identity;
pub mod keys;
pub mod peer;
pub mod tlog;
pub mod tls;
pub mod token;
pub mod trust;

pub use cert::{
    BACKDATE_SECS, CertDer, CertificateAuthority, DEFAULT_TENANT, MicProfile, Role, TenantCaInfo,
    VerifiedMic, der_to_pem, pem_to_der, public_key_from_csr, read_mic, sha256_fingerprint,
    validate_name,
};
pub use crl::{
    Installed, RevocationSet, RevokeReason, Revoked, VerifiedCrl, normalize_serial, verify_crl,
};
pub use csr::csr_common_name;
pub use error::CaError;
pub use identity::{NodeId, NodeKey, verify_signature};
pub use keys::{CaSigner, FileKey, Pkcs11Key, Pkcs11Token, Secret, read_secret_file};
pub use peer::{
    Credentials, FleetTrust, NODE_NAME_SUFFIX, api_client_config, member_client_config,
    member_server_config, node_server_name, peer_identity,
};
pub use tls::{ANCHOR_SERVER_NAME, join_client_tls_config, server_name, server_tls_config};
pub use token::{
    JoinToken, Refusal, TOKEN_PREFIX, TokenError, TokenRecord, check_admission, secret_matches,
};
pub use trust::TrustStore;

/// Formats Unix seconds as RFC 3339 UTC for messages (falls back to the raw
/// number for times `time` cannot represent).
pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {unix}"))
}
