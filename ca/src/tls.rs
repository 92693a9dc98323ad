//! rustls configurations for the join handshake (ring provider, TLS 1.3 only).
//!
//! A joining node knows nothing about the fleet except what its join token says:
//! the fleet id and the SHA-256 fingerprint of the fleet root certificate. So the
//! anchor **presents its full chain including the root**: `[anchor MIC,
//! anchor intermediate, fleet root]`. The joining node's verifier
//!
//! 1. finds the presented certificate whose SHA-256 equals the token's fingerprint
//!    and uses it as the only trust anchor (a fingerprint pins the root exactly, so
//!    an attacker cannot substitute a root of their own),
//! 2. verifies the anchor's MIC up to it with webpki (ed25519 only, EKU serverAuth),
//! 3. checks the MIC is for the token's fleet and has the `anchor` role.
//!
//! The TLS server name is ignored: nodes dial anchors by IP address, and the
//! identity that matters is the certificate chain. Clients pass [`server_name`].
//!
//! Every configuration is built from an explicit ring provider, never the
//! process-wide default, so this crate works whatever else the binary installs.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::cert::{CertDer, Role, ed25519_public_key, parse_cert, sha256_fingerprint};
use crate::error::CaError;
use crate::identity::NodeKey;
use crate::trust::{Usage, verify_chain};

/// The DNS name clients put in the TLS ClientHello when dialing an anchor.
pub const ANCHOR_SERVER_NAME: &str = "anchor.nexus.invalid";

/// The fixed server name a joining node uses when connecting to an anchor.
///
/// Its value does not matter for security (the verifier ignores it); it exists
/// because TLS and QUIC APIs require one.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(ANCHOR_SERVER_NAME).expect("ANCHOR_SERVER_NAME is a valid DNS name")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server config for an anchor's QUIC endpoint: presents `mic_chain` with the
/// node key; ALPN given; no client auth.
///
/// For joining nodes to trust it, `mic_chain` must be `[mic, intermediate, root]`
/// (see the module docs). The key must be the MIC's key.
pub fn server_tls_config(
    mic_chain: Vec<CertDer>,
    key: &NodeKey,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, CaError> {
    let first = mic_chain.first().ok_or_else(|| {
        CaError::Tls("the certificate chain is empty; pass [mic, intermediate, root]".into())
    })?;
    let cert_key = ed25519_public_key(&parse_cert(first)?, "the server certificate")?;
    if cert_key != key.public_key() {
        return Err(CaError::KeyMismatch);
    }
    let chain: Vec<CertificateDer<'static>> =
        mic_chain.into_iter().map(CertificateDer::from).collect();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| CaError::Tls(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Client config for a joining node that has only the root fingerprint and fleet
/// id from a join token.
///
/// The server must present `[mic, intermediate, root]`; see the module docs for
/// what is checked. Verification failures surface as `rustls::Error::General`
/// carrying an operator-readable message.
pub fn join_client_tls_config(
    root_fingerprint: [u8; 32],
    expected_fleet_id: &str,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let provider = provider();
    let verifier = JoinVerifier {
        root_fingerprint,
        expected_fleet_id: expected_fleet_id.to_string(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        // The ring provider always supports TLS 1.3, so this cannot fail.
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Verifies an anchor's chain against a root pinned by fingerprint.
#[derive(Debug)]
struct JoinVerifier {
    root_fingerprint: [u8; 32],
    expected_fleet_id: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl JoinVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let Some(root_pos) = intermediates
            .iter()
            .position(|c| sha256_fingerprint(c) == self.root_fingerprint)
        else {
            let presented_root = intermediates.last().unwrap_or(end_entity);
            return Err(format!(
                "the anchor presented a certificate chain whose root is sha256:{}, but the \
                 join token names sha256:{}: the anchor belongs to another fleet or the token \
                 was altered",
                hex::encode(sha256_fingerprint(presented_root)),
                hex::encode(self.root_fingerprint)
            ));
        };
        let root = &intermediates[root_pos];
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != root_pos)
            .map(|(_, c)| c.clone())
            .collect();
        let mic = verify_chain(end_entity, root, &others, now, Usage::Server)
            .map_err(|e| format!("the anchor's certificate was refused: {e}"))?;
        if mic.fleet_id != self.expected_fleet_id {
            return Err(format!(
                "anchor is in fleet {} but the token is for fleet {}",
                mic.fleet_id, self.expected_fleet_id
            ));
        }
        if mic.role != Role::Anchor {
            return Err(format!(
                "the server {} has a {} certificate, not an anchor certificate: only anchors \
                 admit joining nodes; check the anchor addresses in the token",
                mic.node_id, mic.role
            ));
        }
        Ok(())
    }
}

impl ServerCertVerifier for JoinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(rustls::Error::General)
    }

    ed25519_handshake_signatures!("anchor");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::{Fleet, fleet, profile};
    use rustls::{ClientConnection, ServerConnection};

    const ALPN: &[u8] = b"nexus-join/1";

    /// Anchor MIC + chain `[mic, intermediate, root]` for a fleet's anchor key.
    fn anchor_chain(f: &Fleet, role: Role) -> Vec<CertDer> {
        let mic = f
            .intermediate
            .issue_mic(
                &f.anchor_key.public_key(),
                &profile(f.root.fleet_id(), &f.anchor_key, role),
            )
            .unwrap();
        vec![
            mic,
            f.intermediate.cert_der().to_vec(),
            f.root.cert_der().to_vec(),
        ]
    }

    /// Moves bytes both ways until both sides finish the handshake or one fails.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..20 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            let mut rd = &to_server[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets()?;
            }
            let mut to_client = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut to_client).unwrap();
            }
            let mut rd = &to_client[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn connect(
        chain: Vec<CertDer>,
        key: &NodeKey,
        fingerprint: [u8; 32],
        fleet_id: &str,
    ) -> Result<(), rustls::Error> {
        let server_cfg = server_tls_config(chain, key, &[ALPN]).unwrap();
        let client_cfg = join_client_tls_config(fingerprint, fleet_id, &[ALPN]);
        let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
        let mut client = ClientConnection::new(Arc::new(client_cfg), server_name()).unwrap();
        handshake(&mut client, &mut server)?;
        assert_eq!(client.alpn_protocol(), Some(ALPN));
        // Prove the channel works end to end, not just the handshake.
        use std::io::{Read, Write};
        client.writer().write_all(b"hello anchor").unwrap();
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut &buf[..]).unwrap();
        server.process_new_packets().unwrap();
        let mut got = [0u8; 12];
        server.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello anchor");
        Ok(())
    }

    fn general(err: rustls::Error) -> String {
        match err {
            rustls::Error::General(msg) => msg,
            other => panic!("expected rustls::Error::General, got {other:?}"),
        }
    }

    #[test]
    fn join_accepts_right_anchor() {
        let f = fleet("acme");
        let chain = anchor_chain(&f, Role::Anchor);
        connect(chain, &f.anchor_key, f.root.fingerprint(), "acme").unwrap();
    }

    #[test]
    fn join_refuses_other_fleet_root() {
        let ours = fleet("acme");
        let theirs = fleet("acme"); // same name, different root: must still fail
        let chain = anchor_chain(&theirs, Role::Anchor);
        let err = connect(chain, &theirs.anchor_key, ours.root.fingerprint(), "acme").unwrap_err();
        let msg = general(err);
        assert!(
            msg.contains(&format!(
                "whose root is sha256:{}",
                hex::encode(theirs.root.fingerprint())
            )),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "join token names sha256:{}",
                hex::encode(ours.root.fingerprint())
            )),
            "{msg}"
        );
        assert!(
            msg.contains("another fleet or the token was altered"),
            "{msg}"
        );
    }

    #[test]
    fn join_refuses_chain_without_root() {
        let f = fleet("acme");
        let mut chain = anchor_chain(&f, Role::Anchor);
        chain.pop();
        let err = connect(chain, &f.anchor_key, f.root.fingerprint(), "acme").unwrap_err();
        assert!(general(err).contains("join token names sha256:"));
    }

    #[test]
    fn join_refuses_wrong_fleet_and_non_anchor() {
        let f = fleet("acme");
        let err = connect(
            anchor_chain(&f, Role::Anchor),
            &f.anchor_key,
            f.root.fingerprint(),
            "other",
        )
        .unwrap_err();
        assert_eq!(
            general(err),
            "anchor is in fleet acme but the token is for fleet other"
        );
        let err = connect(
            anchor_chain(&f, Role::Node),
            &f.anchor_key,
            f.root.fingerprint(),
            "acme",
        )
        .unwrap_err();
        assert!(general(err).contains("not an anchor certificate"));
    }

    #[test]
    fn join_refuses_intermediate_posing_as_root_fingerprint() {
        // A token naming the intermediate's fingerprint would make the intermediate
        // the trust anchor; the chain then has no intermediate left, which is refused.
        let f = fleet("acme");
        let chain = anchor_chain(&f, Role::Anchor);
        let err = connect(chain, &f.anchor_key, f.intermediate.fingerprint(), "acme").unwrap_err();
        let msg = general(err);
        assert!(msg.contains("anchor intermediate"), "{msg}");
    }

    #[test]
    fn server_config_checks_key() {
        let f = fleet("acme");
        let chain = anchor_chain(&f, Role::Anchor);
        assert_eq!(
            server_tls_config(chain, &f.node_key, &[ALPN]).unwrap_err(),
            CaError::KeyMismatch
        );
        assert!(server_tls_config(vec![], &f.node_key, &[ALPN]).is_err());
    }
}
