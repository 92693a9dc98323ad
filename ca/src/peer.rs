//! Mutual TLS between fleet members (node-to-node QUIC) and for the HTTPS API.
//!
//! Both sides present their MIC chain `[mic, tenant CA (if one issued it), intermediates…,
//! root]` and check the other's with [`FleetTrust::verify_peer`]: chain to this fleet's root
//! through an anchor intermediate, and a tenant CA of the MIC's own tenant where one issued it
//! (webpki, ed25519), valid now, right fleet, **not revoked**. The node's own certificate sits in
//! a [`Credentials`] that can be swapped at run time, so a renewed MIC is used by the next
//! handshake while established connections continue undisturbed.
//!
//! Server configurations *offer* client authentication without demanding it: the join protocol
//! shares the QUIC endpoint and joining nodes have no certificate yet, and API clients may use
//! API keys instead. A presented certificate is always verified; whether one is required is the
//! protocol's decision (the peer protocol refuses connections without one).

use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, SignatureScheme};

use crate::cert::{CertDer, VerifiedMic, ed25519_public_key, parse_cert, sha256_fingerprint};
use crate::crl::{Installed, RevocationSet};
use crate::error::CaError;
use crate::identity::{NodeId, NodeKey};
use crate::trust::{TrustStore, Usage, verify_chain};

/// DNS suffix of the name a node dials another node by: `<node id>` + this.
pub const NODE_NAME_SUFFIX: &str = ".node.nexus.invalid";

/// The TLS server name for dialing `node`; the verifier then insists the peer is that node.
pub fn node_server_name(node: &NodeId) -> String {
    format!("{node}{NODE_NAME_SUFFIX}")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a node trusts about its fleet right now: the root, the anchor intermediates (which grow
/// when an anchor is promoted), the tenant CAs (which grow as anchors make them) and the revoked
/// serials.
#[derive(Debug)]
pub struct FleetTrust {
    store: RwLock<TrustStore>,
    revocations: RevocationSet,
    /// Strict mode: a peer's MIC must be proven to be in an anchor's transparency log.
    require_logged: std::sync::atomic::AtomicBool,
    /// Serials proven to be in a log.
    logged: RwLock<std::collections::HashSet<String>>,
    /// Serials seen but not proven yet, with their node (for the node to look up).
    unconfirmed: std::sync::Mutex<std::collections::HashMap<String, NodeId>>,
}

/// Most serials waiting for a log lookup at once (each costs a round trip to an anchor).
const MAX_UNCONFIRMED: usize = 4096;

impl FleetTrust {
    /// Starts from `store` with nothing revoked.
    pub fn new(store: TrustStore) -> Arc<FleetTrust> {
        Arc::new(FleetTrust {
            store: RwLock::new(store),
            revocations: RevocationSet::new(),
            require_logged: std::sync::atomic::AtomicBool::new(false),
            logged: RwLock::new(Default::default()),
            unconfirmed: std::sync::Mutex::new(Default::default()),
        })
    }

    /// Strict mode on or off: when on, [`FleetTrust::verify_peer`] refuses a MIC until
    /// [`FleetTrust::confirm_logged`] was called for its serial.
    pub fn require_logged(&self, on: bool) {
        self.require_logged
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records that the MIC with this serial was proven to be in a transparency log.
    pub fn confirm_logged(&self, serial: &str) {
        self.logged
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(serial.to_string());
        self.unconfirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(serial);
    }

    /// The serials (and their nodes) refused for want of a log proof, to be looked up; taken
    /// out of the queue (a serial seen again is queued again).
    pub fn take_unconfirmed(&self) -> Vec<(String, NodeId)> {
        self.unconfirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect()
    }

    /// In strict mode, refuses (and queues for a lookup) a MIC not yet proven to be logged.
    pub fn check_logged(&self, mic: &VerifiedMic) -> Result<(), CaError> {
        if !self
            .require_logged
            .load(std::sync::atomic::Ordering::Relaxed)
            || self
                .logged
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&mic.serial_hex)
        {
            return Ok(());
        }
        let mut queue = self.unconfirmed.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() < MAX_UNCONFIRMED {
            queue.insert(mic.serial_hex.clone(), mic.node_id);
        }
        Err(CaError::NotLogged {
            node: mic.node_id.to_hex(),
            serial: mic.serial_hex.clone(),
        })
    }

    /// A copy of the current trust store.
    pub fn store(&self) -> TrustStore {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds an anchor intermediate (checked to be signed by the root).
    pub fn add_intermediate(&self, der: CertDer) -> Result<(), CaError> {
        self.store
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .add_intermediate(der)
    }

    /// Adds a tenant CA (checked to be signed by a known anchor CA, see
    /// [`TrustStore::add_tenant_ca`]); `Ok(true)` when it was not known before.
    pub fn add_tenant_ca(&self, der: CertDer) -> Result<bool, CaError> {
        let mut store = self.store.write().unwrap_or_else(|p| p.into_inner());
        if store.tenant_cas().contains(&der) {
            return Ok(false);
        }
        store.add_tenant_ca(der)?;
        Ok(true)
    }

    /// The revoked serials this node enforces.
    pub fn revocations(&self) -> &RevocationSet {
        &self.revocations
    }

    /// Verifies and, if newer, enforces a CRL (see [`RevocationSet::install`]).
    pub fn install_crl(&self, der: &[u8]) -> Result<Installed, CaError> {
        let store = self.store();
        self.revocations.install(&store, der)
    }

    /// Checks a peer's MIC: chain, validity at `now_unix`, fleet, and revocation.
    ///
    /// `presented` are intermediates the peer sent; one this node does not know yet is used if
    /// the fleet root signed it (a newly promoted anchor's CA), or if it is a tenant CA signed by
    /// a known (or so presented) anchor CA (one this node has not learned from the fleet
    /// configuration yet). They are used for this check only, not kept.
    pub fn verify_peer(
        &self,
        der: &[u8],
        presented: &[CertificateDer<'_>],
        now_unix: i64,
    ) -> Result<VerifiedMic, CaError> {
        let mic = self.verify_peer_unlogged(der, presented, now_unix)?;
        self.check_logged(&mic)?;
        Ok(mic)
    }

    /// [`FleetTrust::verify_peer`] without the strict-mode log check: for the connections that
    /// fetch log proofs (whose answers carry their own signatures).
    pub fn verify_peer_unlogged(
        &self,
        der: &[u8],
        presented: &[CertificateDer<'_>],
        now_unix: i64,
    ) -> Result<VerifiedMic, CaError> {
        let mut store = self.store();
        let mut maybe_tenant_cas = Vec::new();
        for extra in presented {
            let extra = extra.as_ref();
            if extra == store.root_der()
                || store.intermediates().iter().any(|i| i == extra)
                || store.tenant_cas().iter().any(|i| i == extra)
            {
                continue;
            }
            // Not a fleet intermediate (another fleet's, or a leaf): simply not used.
            if store.add_intermediate(extra.to_vec()).is_err() {
                maybe_tenant_cas.push(extra);
            }
        }
        // After the anchor CAs, which the tenant CAs chain to.
        for extra in maybe_tenant_cas {
            let _ = store.add_tenant_ca(extra.to_vec());
        }
        let mic = store.verify_mic(der, now_unix)?;
        if self.revocations.is_revoked(&mic.serial_hex) {
            return Err(CaError::Revoked {
                node: mic.node_id.to_hex(),
                serial: mic.serial_hex,
            });
        }
        Ok(mic)
    }
}

/// This node's certificate chain and key for TLS, replaceable while connections run.
#[derive(Debug)]
pub struct Credentials {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified_key(chain: Vec<CertDer>, key: &NodeKey) -> Result<Arc<CertifiedKey>, CaError> {
    let first = chain.first().ok_or_else(|| {
        CaError::Tls("the certificate chain is empty; pass [mic, intermediates…, root]".into())
    })?;
    if ed25519_public_key(&parse_cert(first)?, "the node certificate")? != key.public_key() {
        return Err(CaError::KeyMismatch);
    }
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der()));
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| CaError::Tls(e.to_string()))?;
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl Credentials {
    /// `chain` is `[mic, intermediates…, root]`; `key` must be the MIC's key.
    pub fn new(chain: Vec<CertDer>, key: &NodeKey) -> Result<Arc<Credentials>, CaError> {
        Ok(Arc::new(Credentials {
            current: RwLock::new(certified_key(chain, key)?),
        }))
    }

    /// Uses a new chain (a renewed MIC) from the next handshake on.
    pub fn replace(&self, chain: Vec<CertDer>, key: &NodeKey) -> Result<(), CaError> {
        let next = certified_key(chain, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current MIC, DER.
    pub fn mic_der(&self) -> CertDer {
        self.get().cert[0].to_vec()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn now_unix(now: UnixTime) -> i64 {
    now.as_secs().min(i64::MAX as u64) as i64
}

/// Verifies client certificates of fleet members (optional).
#[derive(Debug)]
struct MemberClientVerifier {
    trust: Arc<FleetTrust>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for MemberClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust
            .verify_peer(end_entity, intermediates, now_unix(now))
            .map(|_| ClientCertVerified::assertion())
            .map_err(|e| rustls::Error::General(format!("client certificate refused: {e}")))
    }

    ed25519_handshake_signatures!("client");
}

/// Verifies a server that is a member of this fleet; when dialed by
/// [`node_server_name`], it must be that node.
#[derive(Debug)]
struct MemberServerVerifier {
    trust: Arc<FleetTrust>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for MemberServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Outgoing connections carry self-authenticating answers (signed CRLs, signed tree
        // heads, checked certificates) and fetch the very proofs strict mode needs, so the log
        // check applies to what this node accepts, not to whom it asks.
        let mic = self
            .trust
            .verify_peer_unlogged(end_entity, intermediates, now_unix(now))
            .map_err(|e| rustls::Error::General(format!("server certificate refused: {e}")))?;
        if let ServerName::DnsName(name) = server_name
            && let Some(expected) = name.as_ref().strip_suffix(NODE_NAME_SUFFIX)
            && expected != mic.node_id.to_hex()
        {
            return Err(rustls::Error::General(format!(
                "dialed node {expected} but the server is node {}",
                mic.node_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    ed25519_handshake_signatures!("server");
}

/// Server side for the QUIC endpoint and the HTTPS API: presents `credentials`, verifies any
/// client certificate with `trust` (optional; see the module docs), TLS 1.3 only.
pub fn member_server_config(
    credentials: Arc<Credentials>,
    trust: Arc<FleetTrust>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, CaError> {
    let provider = provider();
    let verifier = MemberClientVerifier {
        trust,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(credentials);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Client side of node-to-node connections: presents `credentials` and requires the server to
/// be a valid, unrevoked member of the fleet.
pub fn member_client_config(
    credentials: Arc<Credentials>,
    trust: Arc<FleetTrust>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let provider = provider();
    let verifier = MemberServerVerifier {
        trust,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(credentials);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Verifies an API server against a pinned fleet root certificate (what the CLI and other API
/// clients hold), ignoring the host name: nodes are reached by IP address and the identity that
/// matters is the MIC chain.
#[derive(Debug)]
struct PinnedRootVerifier {
    root: CertDer,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != self.root.as_slice())
            .cloned()
            .collect();
        verify_chain(end_entity, &self.root, &others, now, Usage::Server)
            .map(|_| ServerCertVerified::assertion())
            .map_err(|e| {
                rustls::Error::General(format!(
                    "the server's certificate does not chain to the fleet root sha256:{}: {e}",
                    hex::encode(sha256_fingerprint(&self.root))
                ))
            })
    }

    ed25519_handshake_signatures!("server");
}

/// Client config for API clients that hold the fleet root certificate (`root_der`), optionally
/// presenting a MIC (`client`) for certificate authentication.
pub fn api_client_config(
    root_der: CertDer,
    client: Option<Arc<Credentials>>,
) -> rustls::ClientConfig {
    let provider = provider();
    let verifier = PinnedRootVerifier {
        root: root_der,
        algorithms: provider.signature_verification_algorithms,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    match client {
        Some(credentials) => builder.with_client_cert_resolver(credentials),
        None => builder.with_no_client_auth(),
    }
}

/// Reads the verified identity out of a peer certificate chain that a handshake accepted.
///
/// The handshake already checked it; this re-checks (cheap) so a connection whose peer was
/// revoked since can be found and closed.
pub fn peer_identity(
    trust: &FleetTrust,
    chain: &[CertificateDer<'_>],
    now_unix: i64,
) -> Result<VerifiedMic, CaError> {
    let (first, rest) = chain
        .split_first()
        .ok_or_else(|| CaError::Tls("the peer presented no certificate".into()))?;
    trust.verify_peer(first, rest, now_unix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::Role;
    use crate::cert::tests::{Fleet, fleet, profile};
    use rustls::{ClientConnection, ServerConnection};
    use std::time::Duration;

    fn chain(f: &Fleet, key: &NodeKey, role: Role) -> Vec<CertDer> {
        let mic = f
            .intermediate
            .issue_mic(&key.public_key(), &profile(f.root.fleet_id(), key, role))
            .unwrap();
        vec![
            mic,
            f.intermediate.cert_der().to_vec(),
            f.root.cert_der().to_vec(),
        ]
    }

    fn trust(f: &Fleet) -> Arc<FleetTrust> {
        FleetTrust::new(
            TrustStore::new(
                f.root.cert_der().to_vec(),
                vec![f.intermediate.cert_der().to_vec()],
            )
            .unwrap(),
        )
    }

    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
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

    fn dial(
        server: (&Arc<Credentials>, &Arc<FleetTrust>),
        client: (&Arc<Credentials>, &Arc<FleetTrust>),
        name: &str,
    ) -> Result<Vec<CertDer>, rustls::Error> {
        let s = member_server_config(server.0.clone(), server.1.clone(), &[b"t"]).unwrap();
        let c = member_client_config(client.0.clone(), client.1.clone(), &[b"t"]);
        let mut s = ServerConnection::new(Arc::new(s)).unwrap();
        let mut c =
            ClientConnection::new(Arc::new(c), ServerName::try_from(name.to_string()).unwrap())
                .unwrap();
        handshake(&mut c, &mut s)?;
        Ok(s.peer_certificates()
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default())
    }

    #[test]
    fn members_authenticate_each_other_and_revocation_applies() {
        let f = fleet("acme");
        let (a_key, b_key) = (NodeKey::generate(), NodeKey::generate());
        let a_chain = chain(&f, &a_key, Role::Node);
        let a = Credentials::new(a_chain.clone(), &a_key).unwrap();
        let b = Credentials::new(chain(&f, &b_key, Role::Node), &b_key).unwrap();
        let (ta, tb) = (trust(&f), trust(&f));
        let seen = dial((&a, &ta), (&b, &tb), &node_server_name(&a_key.node_id())).unwrap();
        let peer = peer_identity(
            &ta,
            &seen
                .iter()
                .map(|c| CertificateDer::from(c.as_slice()))
                .collect::<Vec<_>>(),
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .unwrap();
        assert_eq!(peer.node_id, b_key.node_id());

        // Dialing a by b's name fails: the server is not the node that was dialed.
        let err = dial((&a, &ta), (&b, &tb), &node_server_name(&b_key.node_id())).unwrap_err();
        assert!(
            format!("{err:?}").contains("but the server is node"),
            "{err:?}"
        );

        // Revoke b's certificate at a: a refuses b as a client.
        let serial = crate::read_mic(&b.mic_der()).unwrap().serial_hex;
        let crl = f
            .intermediate
            .issue_crl(
                1,
                &[crate::Revoked {
                    serial_hex: serial,
                    revoked_at_unix: 0,
                    reason: crate::RevokeReason::KeyCompromise,
                }],
                Duration::from_secs(60),
            )
            .unwrap();
        ta.install_crl(&crl).unwrap();
        let err = dial((&a, &ta), (&b, &tb), &node_server_name(&a_key.node_id())).unwrap_err();
        assert!(format!("{err:?}").contains("revoked"), "{err:?}");
        // And b, once it has the list too, refuses nothing of a (a is not revoked) but a
        // server presenting b's certificate is refused by a as a client.
        let err = dial((&b, &tb), (&a, &ta), &node_server_name(&b_key.node_id())).unwrap_err();
        assert!(format!("{err:?}").contains("revoked"), "{err:?}");
    }

    #[test]
    fn a_tenant_node_is_accepted_from_its_presented_chain_before_its_tenant_ca_is_learned() {
        let t = crate::cert::tests::tenant_fleet("acme", "blue");
        let f = &t.fleet;
        // The server knows the tenant CA and presents it; the client has only the anchor CA.
        let server_store = TrustStore::new(
            f.root.cert_der().to_vec(),
            vec![
                f.intermediate.cert_der().to_vec(),
                t.tenant_ca.cert_der().to_vec(),
            ],
        )
        .unwrap();
        let server = Credentials::new(server_store.chain_for(&t.node_mic), &t.node_key).unwrap();
        let server_trust = FleetTrust::new(server_store);
        let client_key = NodeKey::generate();
        let client = Credentials::new(chain(f, &client_key, Role::Node), &client_key).unwrap();
        let client_trust = trust(f);
        dial(
            (&server, &server_trust),
            (&client, &client_trust),
            &node_server_name(&t.node_key.node_id()),
        )
        .unwrap();
        // Presented certificates are used for the check, not kept.
        assert!(client_trust.store().tenant_cas().is_empty());
        // Without the tenant CA in the chain the client cannot place the server's MIC.
        let bare = Credentials::new(
            vec![
                t.node_mic.clone(),
                f.intermediate.cert_der().to_vec(),
                f.root.cert_der().to_vec(),
            ],
            &t.node_key,
        )
        .unwrap();
        assert!(
            dial(
                (&bare, &server_trust),
                (&client, &client_trust),
                &node_server_name(&t.node_key.node_id()),
            )
            .is_err()
        );
        // Learned (from the fleet configuration), it is enough.
        assert!(
            client_trust
                .add_tenant_ca(t.tenant_ca.cert_der().to_vec())
                .unwrap()
        );
        assert!(
            !client_trust
                .add_tenant_ca(t.tenant_ca.cert_der().to_vec())
                .unwrap()
        );
        dial(
            (&bare, &server_trust),
            (&client, &client_trust),
            &node_server_name(&t.node_key.node_id()),
        )
        .unwrap();
    }

    #[test]
    fn renewed_credentials_apply_to_the_next_handshake() {
        let f = fleet("acme");
        let key = NodeKey::generate();
        let creds = Credentials::new(chain(&f, &key, Role::Node), &key).unwrap();
        let first = creds.mic_der();
        creds.replace(chain(&f, &key, Role::Node), &key).unwrap();
        assert_ne!(creds.mic_der(), first);
        let other = NodeKey::generate();
        assert_eq!(
            creds
                .replace(chain(&f, &other, Role::Node), &key)
                .unwrap_err(),
            CaError::KeyMismatch
        );
    }

    #[test]
    fn foreign_fleet_members_are_refused() {
        let ours = fleet("acme");
        let theirs = fleet("acme");
        let (a_key, m_key) = (NodeKey::generate(), NodeKey::generate());
        let a = Credentials::new(chain(&ours, &a_key, Role::Node), &a_key).unwrap();
        let m = Credentials::new(chain(&theirs, &m_key, Role::Node), &m_key).unwrap();
        let err = dial(
            (&a, &trust(&ours)),
            (&m, &trust(&theirs)),
            &node_server_name(&a_key.node_id()),
        )
        .unwrap_err();
        assert!(format!("{err:?}").contains("refused"), "{err:?}");
    }

    #[test]
    fn api_client_pins_the_root() {
        let f = fleet("acme");
        let key = NodeKey::generate();
        let creds = Credentials::new(chain(&f, &key, Role::Node), &key).unwrap();
        let server = member_server_config(creds, trust(&f), &[]).unwrap();
        for (root, ok) in [
            (f.root.cert_der().to_vec(), true),
            (fleet("acme").root.cert_der().to_vec(), false),
        ] {
            let mut s = ServerConnection::new(Arc::new(server.clone())).unwrap();
            let mut c = ClientConnection::new(
                Arc::new(api_client_config(root, None)),
                ServerName::try_from("127.0.0.1").unwrap(),
            )
            .unwrap();
            assert_eq!(handshake(&mut c, &mut s).is_ok(), ok);
        }
    }
}
