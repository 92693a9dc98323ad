//! What fleet members ask each other over QUIC with mutual TLS (ALPN `nexus-peer/1`): revocation
//! lists and certificate renewal. Also the node's side of revocation: which CRLs it enforces,
//! how a new one spreads, and renewing its own MIC before it expires.
//!
//! Every connection on this ALPN must present a valid, unrevoked MIC of the fleet (checked in
//! the TLS handshake by [`nexus_ca::FleetTrust`]). Each request is one bidirectional stream: a
//! JSON [`PeerRequest`], answered by one JSON [`PeerResponse`].
//!
//! Revocation spreads two ways:
//! - **push**: the anchor that revoked sends its new CRL at once to every live member;
//! - **pull**: anchors publish `crl` = `<issuer fingerprint>:<number>` in gossip; a node that
//!   sees a number above the one it holds asks that anchor for its list. This catches nodes the
//!   push missed (partitioned, restarting) and needs nothing but gossip.
//!
//! CRLs are signed by the issuing anchor's CA, so a node accepts one from anyone; it installs it
//! only if the signature verifies and the number grew.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nexus_ca::{
    CertificateAuthority, Credentials, FleetTrust, Installed, MicProfile, NodeId, NodeKey, Role,
    VerifiedMic, der_to_pem, pem_to_der, public_key_from_csr, read_mic,
};
use nexus_mesh::{Mesh, NodeInfo, NodeStatus};
use serde::{Deserialize, Serialize};

use crate::datadir::{self, DataDir};
use crate::store::{CertificateRow, Enrollment, Store};

/// ALPN of the peer protocol.
pub const ALPN_PEER: &[u8] = b"nexus-peer/1";
/// Gossip key under which anchors publish their CRL number.
pub const GOSSIP_KEY_CRL: &str = "crl";
/// Gossip key under which anchors publish their intermediate CA certificate (base64 DER), so
/// every node trusts the MICs a newly promoted anchor issues.
pub const GOSSIP_KEY_CA: &str = "ca";
/// Published (`1`) by the anchor that holds the fleet root key.
pub const GOSSIP_KEY_ROOT: &str = "root";
/// `promote/<node id>` = `pending` | `done`: promotions the root holder authorized.
pub const GOSSIP_PREFIX_PROMOTE: &str = "promote/";
/// `token/<id>` = a join token an anchor created ([`TokenAd`], the secret's hash only), so a
/// token works at every anchor.
pub const GOSSIP_PREFIX_TOKEN: &str = "token/";
/// `token-uses/<id>` = how many joins the publishing anchor admitted with that token.
pub const GOSSIP_PREFIX_TOKEN_USES: &str = "token-uses/";
/// Largest request or response.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// One request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a CRL says it is good for; anchors re-sign before (every renewal check).
const CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Streams one peer may have open at once.
const MAX_STREAMS_PER_PEER: usize = 16;
/// Nodes pushed to at once after a revocation.
const PUSH_CONCURRENCY: usize = 64;

/// A request between fleet members.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerRequest {
    /// The CRLs the answering node holds.
    Crls,
    /// CRLs (base64 DER) for the answering node to install.
    PushCrls {
        /// The lists.
        crls: Vec<String>,
    },
    /// A new MIC for the caller's own key, same identity (anchors only).
    Renew {
        /// PKCS#10 CSR, PEM, for the caller's current key.
        csr_pem: String,
    },
    /// The caller, whose promotion an operator authorized, asks the root holder for an anchor
    /// intermediate CA certificate for a new key (and an anchor MIC for its node key).
    Promote {
        /// PKCS#10 CSR, PEM, for the new CA key (proves the caller holds it).
        ca_csr_pem: String,
    },
    /// Configuration changes (signed envelopes with their authors' MICs) for the receiver,
    /// and the members it relays them to (its subtree of the broadcast).
    ConfigChanges {
        /// The changes.
        changes: Vec<crate::replication::WireChange>,
        /// Node ids (hex) the receiver forwards new changes to.
        #[serde(default)]
        relay: Vec<String>,
    },
    /// One round of an automerge sync session for a document, started by the caller.
    ConfigSync {
        /// `fleet` or `tenant/<id>`.
        doc_id: String,
        /// The first round of a session (the answering side starts from its saved state).
        start: bool,
        /// The caller's message.
        message: crate::replication::WireSync,
    },
    /// Proof that the MIC with this serial is in the answering anchor's transparency log.
    ProveLogged {
        /// Serial, lowercase hex.
        serial: String,
    },
    /// Leaves of the answering anchor's transparency log from `start` (at most `max`), with
    /// its signed tree head: how anchors mirror each other's logs.
    TlogSince {
        /// First leaf index wanted.
        start: u64,
        /// Most leaves wanted.
        max: u32,
    },
    /// An anchor asks the root holder to re-certify its intermediate CA key (same key, so every
    /// MIC it issued stays valid).
    RenewIntermediate {
        /// PKCS#10 CSR, PEM, signed with the anchor's CA key.
        ca_csr_pem: String,
    },
    /// The caller's own audit entries for the answering anchor to keep.
    AuditPush {
        /// Entries, oldest first (at most [`crate::audit::SHIP_BATCH`]).
        entries: Vec<nexus_api::wire::AuditEntry>,
    },
    /// The caller's own usage rows (cumulative) for the answering anchor to roll up.
    ReportUsage {
        /// The caller's change number of the last row (what the acknowledgement covers).
        upto: u64,
        /// Rows, oldest change first (at most [`crate::usage::MAX_REPORT_ROWS`]).
        rows: Vec<nexus_crdt::usage::UsageRow>,
    },
}

/// A join token as anchors share it in gossip: everything but the secret, whose SHA-256 only
/// travels (fleet members only: gossip is authenticated).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenAd {
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    /// Tenant of joining nodes.
    pub tenant: String,
    /// Site, if fixed.
    pub site: Option<String>,
    /// Labels of joining nodes.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Allowed joins, fleet-wide.
    pub max_uses: u32,
    /// Expiry, unix ms.
    pub expires_at_ms: u64,
    /// Creation, unix ms.
    pub created_at_ms: u64,
    /// Revocation, unix ms.
    pub revoked_at_ms: Option<u64>,
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerResponse {
    /// The CRLs held (base64 DER).
    Crls {
        /// The lists.
        crls: Vec<String>,
    },
    /// How many pushed lists were new.
    Installed {
        /// New lists.
        new: usize,
    },
    /// The promotion: the new anchor's intermediate and its anchor MIC.
    Promoted {
        /// Intermediate CA certificate for the CSR's key, PEM.
        intermediate_pem: String,
        /// The caller's MIC with role anchor, PEM.
        cert_pem: String,
    },
    /// A page of a transparency log.
    TlogPage(Box<crate::mirror::TlogPage>),
    /// A log inclusion proof.
    LogProof(Box<crate::mirror::LogProof>),
    /// The answering side's message in a sync session.
    ConfigSync {
        /// Its message (no packet when it has nothing more to say).
        message: crate::replication::WireSync,
    },
    /// A re-certified intermediate.
    Intermediate {
        /// The new certificate, PEM.
        intermediate_pem: String,
    },
    /// The renewed MIC.
    Renewed {
        /// The certificate, PEM.
        cert_pem: String,
        /// The anchor intermediates the anchor knows, PEM.
        intermediates_pem: Vec<String>,
    },
    /// The highest sequence of the caller's audit entries the anchor now holds.
    AuditAck {
        /// Sequence number.
        through: u64,
    },
    /// The anchor stored the caller's usage rows through this change number.
    UsageAccepted {
        /// The `upto` of the report.
        upto: u64,
    },
    /// Refused, with a reason for the operator.
    Refused {
        /// Machine-readable.
        code: String,
        /// What was wrong and what to do.
        message: String,
    },
}

fn refused(code: &str, message: impl Into<String>) -> PeerResponse {
    PeerResponse::Refused {
        code: code.to_string(),
        message: message.into(),
    }
}

/// Joins other anchors admitted with each token, from gossip (token id → count).
pub type RemoteUses = Arc<Mutex<HashMap<String, u32>>>;

/// What only an anchor has: its CA and how it issues.
pub struct AnchorCa {
    /// This anchor's intermediate CA.
    pub ca: Arc<CertificateAuthority>,
    /// SHA-256 of the intermediate certificate, hex: names this anchor's CRL.
    pub issuer: String,
    /// Lifetime of the MICs it issues.
    pub mic_lifetime: Duration,
    /// The fleet root CA, on the anchor that holds its key.
    pub root: Option<Arc<CertificateAuthority>>,
    /// Lifetime of the anchor CAs the root certifies.
    pub ca_lifetime: Duration,
}

/// A revocation an anchor performed.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The new CRL number, or `None` when every serial was already revoked.
    pub crl_number: Option<u64>,
}

/// The node's trust at run time: its credentials, the CRLs it enforces, the peer protocol.
pub struct PeerService {
    /// Trust store + revocations shared with gossip and TLS.
    pub fleet: Arc<FleetTrust>,
    /// This node's certificate chain for TLS.
    pub credentials: Arc<Credentials>,
    key: Arc<NodeKey>,
    node_id: NodeId,
    store: Arc<Store>,
    dir: DataDir,
    mesh: Arc<Mesh>,
    /// The anchor CA, on anchors.
    pub anchor: Option<Arc<AnchorCa>>,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    renew_before: Duration,
    info: Mutex<NodeInfo>,
    connections: Mutex<HashMap<usize, (String, quinn::Connection)>>,
    renewing: tokio::sync::Mutex<()>,
    /// Decommissioned nodes whose certificates this anchor already revoked.
    retired: Mutex<std::collections::HashSet<NodeId>>,
    /// This node's role.
    role: Role,
    /// Set when this node must restart (it became an anchor).
    restart: tokio::sync::watch::Sender<bool>,
    /// Joins other anchors admitted, per token id (shared with the join service).
    remote_uses: RemoteUses,
    /// Small bookkeeping: what this node last published under its own gossip keys (tokens,
    /// uses), tokens imported, anchor addresses saved, when a promotion may be retried.
    published: Mutex<HashMap<String, String>>,
    /// Connections this node opened to peers, reused across requests.
    outgoing: Mutex<HashMap<(SocketAddr, String), quinn::Connection>>,
    /// Replicated configuration, once loaded.
    replication: std::sync::OnceLock<Arc<crate::replication::Replication>>,
    /// Anchors: their CAs per tenant (renewed node MICs come from the tenant's CA).
    tenant_cas: std::sync::OnceLock<Arc<crate::tenant_ca::TenantCas>>,
    /// The audit log (anchors keep the entries other nodes ship).
    audit: std::sync::OnceLock<Arc<crate::audit::AuditLog>>,
    /// Usage metering (anchors roll up what nodes report).
    usage: std::sync::OnceLock<Arc<crate::usage::Usage>>,
    /// Anchors: this anchor's transparency log and its mirrors of the others'.
    logs: std::sync::OnceLock<(
        Arc<crate::transparency::Transparency>,
        Arc<crate::mirror::Mirrors>,
    )>,
}

fn now_unix() -> i64 {
    (crate::now_ms() / 1000) as i64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerService {
    /// Wires the service; `info` is what this node publishes (updated on renewal).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fleet: Arc<FleetTrust>,
        credentials: Arc<Credentials>,
        key: Arc<NodeKey>,
        store: Arc<Store>,
        dir: DataDir,
        mesh: Arc<Mesh>,
        anchor: Option<Arc<AnchorCa>>,
        endpoint: quinn::Endpoint,
        renew_before: Duration,
        info: NodeInfo,
        restart: tokio::sync::watch::Sender<bool>,
        remote_uses: RemoteUses,
    ) -> Arc<PeerService> {
        let tls = nexus_ca::member_client_config(credentials.clone(), fleet.clone(), &[ALPN_PEER]);
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .expect("a TLS 1.3 config with an initial cipher suite");
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(10)).expect("10 s is a valid timeout"),
        ));
        client.transport_config(Arc::new(transport));
        Arc::new(PeerService {
            node_id: key.node_id(),
            fleet,
            credentials,
            key,
            store,
            dir,
            mesh,
            anchor,
            endpoint,
            client,
            renew_before,
            connections: Mutex::new(HashMap::new()),
            renewing: tokio::sync::Mutex::new(()),
            retired: Mutex::new(std::collections::HashSet::new()),
            role: info.role,
            restart,
            remote_uses,
            published: Mutex::new(HashMap::new()),
            logs: std::sync::OnceLock::new(),
            replication: std::sync::OnceLock::new(),
            tenant_cas: std::sync::OnceLock::new(),
            audit: std::sync::OnceLock::new(),
            usage: std::sync::OnceLock::new(),
            outgoing: Mutex::new(HashMap::new()),
            info: Mutex::new(info),
        })
    }

    /// Serves one accepted connection whose ALPN is [`ALPN_PEER`].
    pub async fn serve(self: Arc<Self>, connection: quinn::Connection) {
        let peer = connection
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .ok_or_else(|| "no client certificate".to_string())
            .and_then(|chain| {
                nexus_ca::peer_identity(&self.fleet, &chain, now_unix()).map_err(|e| e.to_string())
            });
        let peer = match peer {
            Ok(peer) => peer,
            Err(err) => {
                metrics::counter!("nexus_peer_connections_refused_total", "reason" => "certificate")
                    .increment(1);
                tracing::debug!(remote = %connection.remote_address(), error = %err, "peer refused");
                connection.close(1u32.into(), b"a valid fleet certificate is required");
                return;
            }
        };
        let id = connection.stable_id();
        lock(&self.connections).insert(id, (peer.serial_hex.clone(), connection.clone()));
        let streams = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS_PER_PEER));
        let peer = Arc::new(peer);
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let Ok(permit) = streams.clone().try_acquire_owned() else {
                let _ = send.reset(2u32.into());
                continue;
            };
            let (service, peer) = (self.clone(), peer.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let exchange = async {
                    let bytes = recv.read_to_end(MAX_MESSAGE).await?;
                    let response = match serde_json::from_slice::<PeerRequest>(&bytes) {
                        Ok(request) => service.handle(&peer, request).await,
                        Err(err) => refused("malformed", format!("not a peer request: {err}")),
                    };
                    send.write_all(&serde_json::to_vec(&response)?).await?;
                    send.finish()?;
                    anyhow::Ok(())
                };
                if let Err(err) = tokio::time::timeout(REQUEST_TIMEOUT * 2, exchange).await {
                    tracing::debug!(error = %err, "peer request timed out");
                }
            });
        }
        lock(&self.connections).remove(&id);
    }

    async fn handle(&self, caller: &VerifiedMic, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::Crls => PeerResponse::Crls {
                crls: self
                    .fleet
                    .revocations()
                    .crls()
                    .into_iter()
                    .map(|(_, der)| STANDARD.encode(der))
                    .collect(),
            },
            PeerRequest::PushCrls { crls } => {
                let mut ders = Vec::new();
                for crl in crls.iter().take(64) {
                    match STANDARD.decode(crl) {
                        Ok(der) => ders.push(der),
                        Err(err) => {
                            return refused("malformed", format!("a CRL is not base64: {err}"));
                        }
                    }
                }
                PeerResponse::Installed {
                    new: self.accept_crls(ders).await,
                }
            }
            PeerRequest::Renew { csr_pem } => self.renew_for(caller, &csr_pem).await,
            PeerRequest::Promote { ca_csr_pem } => self.promote_for(caller, &ca_csr_pem).await,
            PeerRequest::ConfigChanges { changes, relay } => {
                let Some(replication) = self.replication.get().cloned() else {
                    return refused("not_ready", "configuration is not loaded yet");
                };
                let relay = relay
                    .into_iter()
                    .take(crate::replication::MAX_RELAY)
                    .collect();
                PeerResponse::Installed {
                    new: replication.receive_push(changes, relay).await,
                }
            }
            PeerRequest::ConfigSync {
                doc_id,
                start,
                message,
            } => {
                let Some(replication) = self.replication.get().cloned() else {
                    return refused("not_ready", "configuration is not loaded yet");
                };
                let Some(id) = crate::replication::parse_doc_id(&doc_id) else {
                    return refused("malformed", format!("no document {doc_id:?}"));
                };
                // Replication follows tenancy: another tenant's document never leaves here.
                let facts = nexus_crdt::AuthorFacts {
                    node_id: caller.node_id,
                    role: caller.role,
                    tenant: caller.tenant.clone(),
                    site: caller.site.clone(),
                };
                if !nexus_crdt::may_replicate(&id, &facts) {
                    return refused(
                        "not_yours",
                        format!("node {} may not hold document {id}", caller.node_id),
                    );
                }
                let peer = caller.node_id;
                match tokio::task::spawn_blocking(move || {
                    replication.respond(&peer, &id, start, message)
                })
                .await
                {
                    Ok(Ok(message)) => PeerResponse::ConfigSync { message },
                    Ok(Err(err)) => refused("sync_refused", format!("{err:#}")),
                    Err(err) => refused("internal", err.to_string()),
                }
            }
            PeerRequest::AuditPush { entries } => {
                if self.anchor.is_none() {
                    return refused(
                        "not_an_anchor",
                        "only anchors keep other nodes' audit entries",
                    );
                }
                let Some(audit) = self.audit.get().cloned() else {
                    return refused("not_ready", "the audit log is not open yet");
                };
                if entries.len() > crate::audit::SHIP_BATCH {
                    return refused(
                        "too_many",
                        format!(
                            "at most {} audit entries per shipment",
                            crate::audit::SHIP_BATCH
                        ),
                    );
                }
                let sender = caller.node_id;
                let tenant = (caller.role != Role::Anchor).then(|| caller.tenant.clone());
                match tokio::task::spawn_blocking(move || {
                    audit.accept(&sender, tenant.as_deref(), &entries)
                })
                .await
                {
                    Ok(Ok(through)) => PeerResponse::AuditAck { through },
                    Ok(Err(err)) => refused("refused", format!("{err:#}")),
                    Err(err) => refused("internal", err.to_string()),
                }
            }
            PeerRequest::ReportUsage { upto, rows } => {
                let Some(usage) = self.usage.get().cloned() else {
                    return refused("not_ready", "usage metering is not open yet");
                };
                usage.accept(caller, upto, rows).await
            }
            PeerRequest::ProveLogged { serial } => {
                let Some((log, _)) = self.logs.get().cloned() else {
                    return refused("not_an_anchor", "only anchors keep a transparency log");
                };
                match tokio::task::spawn_blocking(move || log.prove(&serial)).await {
                    Ok(Ok(proof)) => PeerResponse::LogProof(Box::new(proof)),
                    Ok(Err(err)) => refused("not_logged_here", format!("{err}")),
                    Err(err) => refused("internal", err.to_string()),
                }
            }
            PeerRequest::TlogSince { start, max } => {
                let Some((log, _)) = self.logs.get().cloned() else {
                    return refused("not_an_anchor", "only anchors keep a transparency log");
                };
                let max = max.min(crate::mirror::PAGE);
                match tokio::task::spawn_blocking(move || log.page(start, max)).await {
                    Ok(Ok(page)) => PeerResponse::TlogPage(Box::new(page)),
                    Ok(Err(err)) => refused("internal", format!("{err}")),
                    Err(err) => refused("internal", err.to_string()),
                }
            }
            PeerRequest::RenewIntermediate { ca_csr_pem } => {
                self.renew_intermediate_for(caller, &ca_csr_pem).await
            }
        }
    }

    /// Root holder: answers a promoted node's request for its anchor CA.
    async fn promote_for(&self, caller: &VerifiedMic, ca_csr_pem: &str) -> PeerResponse {
        let Some(anchor) = self.anchor.clone() else {
            return refused("not_an_anchor", "this node is not an anchor");
        };
        let Some(root) = anchor.root.clone() else {
            return refused(
                "not_root_holder",
                "this anchor does not hold the fleet root key; promotions are signed by the \
                 fleet's first anchor",
            );
        };
        let node = caller.node_id.to_string();
        let store = self.store.clone();
        let pending = tokio::task::spawn_blocking(move || store.promotions()).await;
        let authorized = matches!(&pending, Ok(Ok(rows)) if rows.iter().any(|(id, _, done)| *id == node && done.is_none()));
        if !authorized {
            return refused(
                "not_authorized",
                format!(
                    "no promotion of node {} is pending: a fleet admin runs `nexus anchor promote \
                     {}` first",
                    caller.node_id, caller.node_id
                ),
            );
        }
        let ca_key = match public_key_from_csr(ca_csr_pem) {
            Ok(pk) => pk,
            Err(err) => return refused("bad_csr", format!("CA key CSR refused: {err}")),
        };
        if ca_key == caller.public_key {
            return refused(
                "bad_csr",
                "the CA key must be a new key, not the node's own identity key",
            );
        }
        let caller = caller.clone();
        let (store, fleet) = (self.store.clone(), self.fleet.clone());
        let done = tokio::task::spawn_blocking(move || {
            let intermediate = root.certify_intermediate(
                &caller.fleet_id,
                caller.node_id,
                &ca_key,
                anchor.ca_lifetime,
            )?;
            let mic = anchor.ca.issue_mic(
                &caller.public_key,
                &MicProfile {
                    fleet_id: caller.fleet_id.clone(),
                    node_id: caller.node_id,
                    tenant: caller.tenant.clone(),
                    site: caller.site.clone(),
                    role: Role::Anchor,
                    validity: anchor.mic_lifetime,
                },
            )?;
            let cert_pem = der_to_pem(&mic);
            store.record_certificate(
                &Enrollment {
                    serial: read_mic(&mic)?.serial_hex,
                    node_id: caller.node_id.to_string(),
                    cert_pem: cert_pem.clone(),
                },
                "promotion",
            )?;
            store.complete_promotion(&caller.node_id.to_string())?;
            fleet.add_intermediate(intermediate.clone())?;
            anyhow::Ok((der_to_pem(&intermediate), cert_pem, caller.node_id))
        })
        .await;
        match done {
            Ok(Ok((intermediate_pem, cert_pem, node))) => {
                self.persist_intermediates();
                self.mesh
                    .publish(&format!("{GOSSIP_PREFIX_PROMOTE}{node}"), "done")
                    .await;
                tracing::info!(node = %node, "promoted a node to anchor");
                PeerResponse::Promoted {
                    intermediate_pem,
                    cert_pem,
                }
            }
            Ok(Err(err)) => refused("issue_failed", format!("{err:#}")),
            Err(err) => refused("internal", err.to_string()),
        }
    }

    /// Root holder: re-certifies the CA key of the calling anchor.
    async fn renew_intermediate_for(&self, caller: &VerifiedMic, ca_csr_pem: &str) -> PeerResponse {
        let Some(anchor) = self.anchor.clone() else {
            return refused("not_an_anchor", "this node is not an anchor");
        };
        let Some(root) = anchor.root.clone() else {
            return refused(
                "not_root_holder",
                "this anchor does not hold the fleet root key",
            );
        };
        if caller.role != Role::Anchor {
            return refused("not_an_anchor", "only anchors hold intermediate CAs");
        }
        let key = match public_key_from_csr(ca_csr_pem) {
            Ok(pk) => pk,
            Err(err) => return refused("bad_csr", format!("CA key CSR refused: {err}")),
        };
        // The key must be one the root already certified for this very anchor.
        let known = self.fleet.store().intermediates().iter().any(|der| {
            CertificateAuthority::describe_intermediate(der)
                .is_ok_and(|(node, pk, _, _)| node == caller.node_id.to_hex() && pk == key)
        });
        if !known {
            return refused(
                "unknown_ca_key",
                format!(
                    "the CSR's key is not the CA key of anchor {}: only an existing anchor CA is \
                     renewed (a new one comes with `nexus anchor promote`)",
                    caller.node_id
                ),
            );
        }
        match root.certify_intermediate(&caller.fleet_id, caller.node_id, &key, anchor.ca_lifetime)
        {
            Ok(der) => {
                let _ = self.fleet.add_intermediate(der.clone());
                self.persist_intermediates();
                tracing::info!(anchor = %caller.node_id, "re-certified an anchor CA");
                PeerResponse::Intermediate {
                    intermediate_pem: der_to_pem(&der),
                }
            }
            Err(err) => refused("issue_failed", err.to_string()),
        }
    }

    /// Anchors: re-certifies this anchor's intermediate CA when a third of its life is left
    /// (by the root holder; itself when it is the root holder), then restarts to use it.
    async fn renew_intermediate_if_due(&self) -> anyhow::Result<()> {
        let Some(anchor) = &self.anchor else {
            return Ok(());
        };
        let (_, key, not_before, not_after) =
            CertificateAuthority::describe_intermediate(anchor.ca.cert_der())?;
        if not_after - now_unix() > (not_after - not_before - nexus_ca::BACKDATE_SECS).max(0) / 3 {
            return Ok(());
        }
        tracing::info!(not_after, "renewing this anchor's intermediate CA");
        let der = match &anchor.root {
            Some(root) => root.certify_intermediate(
                anchor.ca.fleet_id(),
                self.node_id,
                &key,
                anchor.ca_lifetime,
            )?,
            None => {
                let holder = self
                    .mesh
                    .published(GOSSIP_KEY_ROOT)
                    .await
                    .into_iter()
                    .map(|(node, _)| node)
                    .next()
                    .context("no anchor holding the fleet root key is known")?;
                let addr = self
                    .mesh
                    .member(&holder)
                    .and_then(|m| m.info.map(|i| i.quic_addr))
                    .context("the root holder's QUIC address is not known")?;
                let csr = crate::cakeys::ca_csr(&self.dir)?;
                match self
                    .request(
                        holder,
                        addr,
                        &PeerRequest::RenewIntermediate { ca_csr_pem: csr },
                    )
                    .await?
                {
                    PeerResponse::Intermediate { intermediate_pem } => {
                        pem_to_der(&intermediate_pem)?
                            .into_iter()
                            .next()
                            .context("no certificate in the answer")?
                    }
                    PeerResponse::Refused { code, message } => bail!("refused ({code}): {message}"),
                    other => bail!("unexpected answer {other:?}"),
                }
            }
        };
        let (_, new_key, _, new_not_after) = CertificateAuthority::describe_intermediate(&der)?;
        if new_key != key || new_not_after <= not_after {
            bail!("the renewed intermediate is not a later certificate for this anchor's key");
        }
        self.fleet.add_intermediate(der.clone())?;
        self.persist_intermediates();
        datadir::write_public(&self.dir.ca_cert(), &der_to_pem(&der))?;
        tracing::info!(
            not_after = new_not_after,
            "anchor CA renewed; restarting to use it"
        );
        let _ = self.restart.send(true);
        Ok(())
    }

    /// Root holder: authorizes `node` to become an anchor; it picks that up from gossip.
    pub async fn authorize_promotion(&self, node: NodeId) -> anyhow::Result<()> {
        let store = self.store.clone();
        let id = node.to_string();
        tokio::task::spawn_blocking(move || store.request_promotion(&id)).await??;
        self.mesh
            .publish(&format!("{GOSSIP_PREFIX_PROMOTE}{node}"), "pending")
            .await;
        Ok(())
    }

    /// Whether this anchor holds the fleet root key.
    pub fn holds_root(&self) -> bool {
        self.anchor.as_ref().is_some_and(|a| a.root.is_some())
    }

    /// Writes the intermediates this node trusts to `trust/intermediates.pem`.
    fn persist_intermediates(&self) {
        let pem: String = self
            .fleet
            .store()
            .intermediates()
            .iter()
            .map(|d| der_to_pem(d))
            .collect();
        if let Err(err) = datadir::write_public(&self.dir.trust_intermediates(), &pem) {
            tracing::error!(error = %format!("{err:#}"), "cannot persist the trusted anchor CAs");
        }
    }

    /// Anchors: publishes this anchor's CA certificate, its pending promotions and its tokens.
    pub async fn publish_anchor_state(&self) -> anyhow::Result<()> {
        let Some(anchor) = &self.anchor else {
            return Ok(());
        };
        self.mesh
            .publish(GOSSIP_KEY_CA, &STANDARD.encode(anchor.ca.cert_der()))
            .await;
        if anchor.root.is_some() {
            self.mesh.publish(GOSSIP_KEY_ROOT, "1").await;
            for (node, _, done) in self.store.promotions()? {
                let state = if done.is_some() { "done" } else { "pending" };
                self.mesh
                    .publish(&format!("{GOSSIP_PREFIX_PROMOTE}{node}"), state)
                    .await;
            }
        }
        let own = self.store.own_token_ids()?;
        for row in self.store.tokens()? {
            if own.contains(&row.id) {
                self.advertise_token(&row).await;
            }
        }
        Ok(())
    }

    /// Anchors: shares a token this anchor created (or its revocation) with the other anchors.
    pub async fn advertise_token(&self, row: &crate::store::TokenRow) {
        if row.expires_at_ms <= crate::now_ms() {
            return;
        }
        let ad = TokenAd {
            secret_hash: hex::encode(row.secret_hash),
            tenant: row.tenant.clone(),
            site: row.site.clone(),
            labels: row.labels.clone(),
            max_uses: row.max_uses,
            expires_at_ms: row.expires_at_ms,
            created_at_ms: row.created_at_ms,
            revoked_at_ms: row.revoked_at_ms,
        };
        let value = serde_json::to_string(&ad).expect("TokenAd serializes");
        self.publish_once(&format!("{GOSSIP_PREFIX_TOKEN}{}", row.id), value)
            .await;
    }

    async fn publish_once(&self, key: &str, value: String) {
        if lock(&self.published).get(key) == Some(&value) {
            return;
        }
        self.mesh.publish(key, &value).await;
        lock(&self.published).insert(key.to_string(), value);
    }

    /// Anchors: the transparency log this anchor serves, and the mirrors it keeps.
    pub fn set_logs(
        &self,
        log: Arc<crate::transparency::Transparency>,
        mirrors: Arc<crate::mirror::Mirrors>,
    ) {
        let _ = self.logs.set((log, mirrors));
    }

    /// Publishes the configuration version this node applies (its tenant document's) in its
    /// gossip info, which `GET /v1/nodes` shows.
    pub async fn set_config_version(&self, version: u64) {
        let info = {
            let mut info = lock(&self.info);
            if info.config_version == version {
                return;
            }
            info.config_version = version;
            info.clone()
        };
        self.mesh.set_info(&info).await;
    }

    /// Hands the audit log to the peer protocol.
    pub fn set_audit(&self, audit: Arc<crate::audit::AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// Hands usage metering to the peer protocol.
    pub fn set_usage(&self, usage: Arc<crate::usage::Usage>) {
        let _ = self.usage.set(usage);
    }

    /// Hands the replicated configuration to the peer protocol.
    pub fn set_replication(&self, replication: Arc<crate::replication::Replication>) {
        let _ = self.replication.set(replication);
    }

    /// Hands this anchor's tenant CAs to the renewal service.
    pub fn set_tenant_cas(&self, tenant_cas: Arc<crate::tenant_ca::TenantCas>) {
        let _ = self.tenant_cas.set(tenant_cas);
    }

    /// The mirrors of the other anchors' logs (anchors).
    pub fn mirrors(&self) -> Option<Arc<crate::mirror::Mirrors>> {
        self.logs.get().map(|(_, m)| m.clone())
    }

    /// Anchors: brings every mirror of another anchor's log up to date (a few pages each).
    async fn mirror_logs(&self) {
        let Some((_, mirrors)) = self.logs.get().cloned() else {
            return;
        };
        let anchors: Vec<(NodeId, SocketAddr)> = self
            .mesh
            .members()
            .into_iter()
            .filter(|m| m.node_id != self.node_id && m.status == NodeStatus::Online)
            .filter_map(|m| {
                let info = m.info?;
                (info.role == Role::Anchor).then_some((m.node_id, info.quic_addr))
            })
            .collect();
        for (origin, addr) in anchors {
            for _ in 0..10 {
                let Some(start) = mirrors.next_start(&origin) else {
                    break;
                };
                let request = PeerRequest::TlogSince {
                    start,
                    max: crate::mirror::PAGE,
                };
                let page = match self.request(origin, addr, &request).await {
                    Ok(PeerResponse::TlogPage(page)) => page,
                    Ok(other) => {
                        tracing::debug!(anchor = %origin, answer = ?other, "no log page");
                        break;
                    }
                    Err(err) => {
                        tracing::debug!(anchor = %origin, error = %format!("{err:#}"), "cannot fetch a log page");
                        break;
                    }
                };
                let fleet = self.fleet.clone();
                let mirrors = mirrors.clone();
                let full = page.leaves.len() as u32 >= crate::mirror::PAGE;
                let applied = tokio::task::spawn_blocking(move || {
                    mirrors.apply(origin, start, &page, |der| {
                        fleet.store().intermediates().iter().any(|i| i == der)
                            || fleet.add_intermediate(der.to_vec()).is_ok()
                    })
                })
                .await;
                match applied {
                    Ok(Ok(_)) if full => continue,
                    Ok(Ok(_)) => break,
                    Ok(Err(err)) => {
                        tracing::warn!(anchor = %origin, error = %format!("{err:#}"), "log page refused");
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// Strict mode: looks up the log proofs of the MICs refused for want of one.
    async fn confirm_logged_peers(&self) {
        let wanted = self.fleet.take_unconfirmed();
        if wanted.is_empty() {
            return;
        }
        let mut anchors: Vec<(Option<NodeId>, SocketAddr)> = self
            .mesh
            .members()
            .into_iter()
            .filter(|m| m.status == NodeStatus::Online)
            .filter_map(|m| {
                let info = m.info?;
                (info.role == Role::Anchor).then_some((Some(m.node_id), info.quic_addr))
            })
            .collect();
        // Before this node accepts anyone's gossip it knows no anchor from it: the addresses
        // remembered from joining (and from earlier runs) are asked by address.
        let store = self.store.clone();
        if let Ok(Ok(known)) = tokio::task::spawn_blocking(move || store.anchor_addrs()).await {
            for addr in known.iter().filter_map(|a| a.parse::<SocketAddr>().ok()) {
                if !anchors.iter().any(|(_, a)| *a == addr) {
                    anchors.push((None, addr));
                }
            }
        }
        for (serial, node) in wanted.into_iter().take(64) {
            let mut confirmed = false;
            for (anchor, addr) in &anchors {
                let proof = if *anchor == Some(self.node_id) {
                    let Some((log, _)) = self.logs.get().cloned() else {
                        continue;
                    };
                    let serial = serial.clone();
                    match tokio::task::spawn_blocking(move || log.prove(&serial)).await {
                        Ok(Ok(proof)) => proof,
                        _ => continue,
                    }
                } else {
                    let request = PeerRequest::ProveLogged {
                        serial: serial.clone(),
                    };
                    let answer = match anchor {
                        Some(anchor) => self.request(*anchor, *addr, &request).await,
                        None => self.request_at(*addr, &request).await,
                    };
                    match answer {
                        Ok(PeerResponse::LogProof(proof)) => *proof,
                        _ => continue,
                    }
                };
                let fleet = self.fleet.clone();
                let checked = proof.check(*anchor, &serial, node, |der| {
                    fleet.store().intermediates().iter().any(|i| i == der)
                        || fleet.add_intermediate(der.to_vec()).is_ok()
                });
                match checked {
                    Ok(()) => {
                        self.fleet.confirm_logged(&serial);
                        metrics::counter!("nexus_mic_log_checks_total", "outcome" => "proven")
                            .increment(1);
                        confirmed = true;
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(anchor = %addr, serial = %serial, error = %format!("{err:#}"), "bad log proof")
                    }
                }
            }
            if !confirmed {
                metrics::counter!("nexus_mic_log_checks_total", "outcome" => "unproven")
                    .increment(1);
                tracing::warn!(node = %node, serial = %serial, "no anchor proves this certificate is logged; it stays refused");
            }
        }
    }

    /// Joins that other anchors admitted with token `id` (from gossip).
    pub fn remote_uses(&self, id: &str) -> u32 {
        lock(&self.remote_uses).get(id).copied().unwrap_or(0)
    }

    /// Keeps fleet-wide trust state in step with gossip: anchor CAs, promotions, tokens.
    async fn sync_fleet_state(self: &Arc<Self>) {
        // Anchor CAs: a new one is trusted once the fleet root is seen to have signed it.
        let known = self.fleet.store();
        let mut learned = false;
        for (node, value) in self.mesh.published(GOSSIP_KEY_CA).await {
            let Ok(der) = STANDARD.decode(&value) else {
                continue;
            };
            if known.intermediates().contains(&der) {
                continue;
            }
            match self.fleet.add_intermediate(der) {
                Ok(()) => {
                    learned = true;
                    tracing::info!(anchor = %node, "trusting a new anchor CA");
                }
                Err(err) => tracing::warn!(anchor = %node, error = %err, "refused an anchor CA"),
            }
        }
        if learned {
            self.persist_intermediates();
        }
        // Remember where anchors answer, for the next start.
        let mut anchors: Vec<String> = self
            .mesh
            .members()
            .into_iter()
            .filter(|m| m.status == NodeStatus::Online)
            .filter_map(|m| m.info)
            .filter(|i| i.role == Role::Anchor && !i.quic_addr.ip().is_unspecified())
            .map(|i| i.quic_addr.to_string())
            .collect();
        anchors.sort();
        let joined = anchors.join(",");
        if !anchors.is_empty() && lock(&self.published).get("anchors") != Some(&joined) {
            let store = self.store.clone();
            let saved =
                tokio::task::spawn_blocking(move || store.save_anchor_addrs(&anchors, true)).await;
            if matches!(saved, Ok(Ok(()))) {
                lock(&self.published).insert("anchors".to_string(), joined);
            }
        }
        // Our own promotion.
        if self.role != Role::Anchor {
            let key = format!("{GOSSIP_PREFIX_PROMOTE}{}", self.node_id);
            let from = self
                .mesh
                .published(&key)
                .await
                .into_iter()
                .find(|(_, v)| v == "pending")
                .map(|(anchor, _)| anchor);
            let due = lock(&self.published)
                .get("promotion-retry-at")
                .and_then(|at| at.parse::<u64>().ok())
                .is_none_or(|at| crate::now_ms() >= at);
            if let Some(anchor) = from.filter(|_| due)
                && let Err(err) = self.become_anchor(anchor).await
            {
                // Not again for 5 s: each attempt makes a key and asks the root holder.
                lock(&self.published).insert(
                    "promotion-retry-at".to_string(),
                    (crate::now_ms() + 5_000).to_string(),
                );
                tracing::warn!(error = %format!("{err:#}"), "promotion to anchor failed; retrying");
            }
            return;
        }
        // Anchors: tokens other anchors created, and how often they were used there.
        let mut uses: HashMap<String, u32> = HashMap::new();
        for (origin, key, value) in self.mesh.published_prefix(GOSSIP_PREFIX_TOKEN_USES).await {
            if origin == self.node_id {
                continue;
            }
            if let (Some(id), Ok(n)) = (
                key.strip_prefix(GOSSIP_PREFIX_TOKEN_USES),
                value.parse::<u32>(),
            ) {
                *uses.entry(id.to_string()).or_default() += n;
            }
        }
        *lock(&self.remote_uses) = uses;
        for (origin, key, value) in self.mesh.published_prefix(GOSSIP_PREFIX_TOKEN).await {
            if origin == self.node_id
                || lock(&self.published).get(&format!("seen/{key}")) == Some(&value)
            {
                continue;
            }
            let (Some(id), Ok(ad)) = (
                key.strip_prefix(GOSSIP_PREFIX_TOKEN),
                serde_json::from_str::<TokenAd>(&value),
            ) else {
                continue;
            };
            let Some(secret_hash) = hex::decode(&ad.secret_hash)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
            else {
                continue;
            };
            let row = crate::store::TokenRow {
                id: id.to_string(),
                secret_hash,
                tenant: ad.tenant,
                site: ad.site,
                labels: ad.labels,
                max_uses: ad.max_uses,
                uses: 0,
                expires_at_ms: ad.expires_at_ms,
                created_at_ms: ad.created_at_ms,
                revoked_at_ms: ad.revoked_at_ms,
            };
            let store = self.store.clone();
            let origin_s = origin.to_string();
            let imported =
                tokio::task::spawn_blocking(move || store.import_token(&row, &origin_s)).await;
            if matches!(imported, Ok(Ok(_))) {
                lock(&self.published).insert(format!("seen/{key}"), value);
            }
        }
        // Our own uses, for the others.
        let store = self.store.clone();
        if let Ok(Ok(rows)) = tokio::task::spawn_blocking(move || store.tokens()).await {
            for row in rows
                .iter()
                .filter(|r| r.uses > 0 && r.expires_at_ms > crate::now_ms())
            {
                self.publish_once(
                    &format!("{GOSSIP_PREFIX_TOKEN_USES}{}", row.id),
                    row.uses.to_string(),
                )
                .await;
            }
        }
    }

    /// A plain node whose promotion was authorized: makes a CA key, gets it certified by the
    /// root holder, stores everything, and restarts as an anchor.
    async fn become_anchor(&self, root_holder: NodeId) -> anyhow::Result<()> {
        let addr = self
            .mesh
            .member(&root_holder)
            .and_then(|m| m.info.map(|i| i.quic_addr))
            .context("the root holder's QUIC address is not known yet")?;
        // A half-finished earlier attempt (crash before the role was stored) starts over.
        for stale in [self.dir.ca_key(), self.dir.ca_cert()] {
            if stale.exists() {
                std::fs::remove_file(&stale)
                    .with_context(|| format!("removing {}", stale.display()))?;
            }
        }
        let ca_key = NodeKey::generate();
        let request = PeerRequest::Promote {
            ca_csr_pem: ca_key.csr_pem()?,
        };
        let (intermediate_pem, cert_pem) = match self.request(root_holder, addr, &request).await? {
            PeerResponse::Promoted {
                intermediate_pem,
                cert_pem,
            } => (intermediate_pem, cert_pem),
            PeerResponse::Refused { code, message } => bail!("refused ({code}): {message}"),
            other => bail!("unexpected answer {other:?}"),
        };
        let intermediate = pem_to_der(&intermediate_pem)?
            .into_iter()
            .next()
            .context("no intermediate certificate in the answer")?;
        // Checks it is a CA for our new key, signed by the fleet root.
        CertificateAuthority::load_with(&intermediate_pem, Arc::new(ca_key.clone()))
            .context("the intermediate the root holder sent is not for our CA key")?;
        self.fleet
            .add_intermediate(intermediate)
            .context("the intermediate is not signed by the fleet root")?;
        crate::cakeys::install_promoted(&self.dir, ca_key, &intermediate_pem)?;
        self.persist_intermediates();
        self.install_mic(&cert_pem, &[]).await?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.set_role(Role::Anchor.as_str())).await??;
        tracing::info!("this node is now an anchor; restarting to take up the role");
        let _ = self.restart.send(true);
        Ok(())
    }

    async fn renew_for(&self, caller: &VerifiedMic, csr_pem: &str) -> PeerResponse {
        let Some(anchor) = self.anchor.clone() else {
            return refused(
                "not_an_anchor",
                "this node is not an anchor; ask an anchor to renew",
            );
        };
        let public_key = match public_key_from_csr(csr_pem) {
            Ok(pk) => pk,
            Err(err) => return refused("bad_csr", format!("CSR refused: {err}")),
        };
        if public_key != caller.public_key {
            metrics::counter!("nexus_mic_issuance_refused_total", "reason" => "identity")
                .increment(1);
            return refused(
                "identity_mismatch",
                format!(
                    "the CSR is for node {}, but the caller is node {}: a node renews only its own \
                     identity",
                    NodeId::from_public_key(&public_key),
                    caller.node_id
                ),
            );
        }
        let profile = MicProfile {
            fleet_id: caller.fleet_id.clone(),
            node_id: caller.node_id,
            tenant: caller.tenant.clone(),
            site: caller.site.clone(),
            role: caller.role,
            validity: anchor.mic_lifetime,
        };
        // A node keeps the issuer it joined with: its tenant's CA (the anchor's own CA for the
        // default tenant, for anchors, and where the anchor CA cannot certify tenant CAs).
        let issuer = match (self.tenant_cas.get(), caller.role) {
            (Some(cas), Role::Node) => match cas.issuer_for(&caller.tenant).await {
                Ok(issuer) => issuer,
                Err(err) => return refused("issue_failed", format!("{err:#}")),
            },
            _ => anchor.ca.clone(),
        };
        let store = self.store.clone();
        let issued = tokio::task::spawn_blocking(move || {
            let der = issuer.issue_mic(&public_key, &profile)?;
            let serial = read_mic(&der)?.serial_hex;
            let cert_pem = der_to_pem(&der);
            store.record_certificate(
                &Enrollment {
                    serial,
                    node_id: profile.node_id.to_string(),
                    cert_pem: cert_pem.clone(),
                },
                "renewal",
            )?;
            anyhow::Ok(cert_pem)
        })
        .await;
        match issued {
            Ok(Ok(cert_pem)) => {
                metrics::counter!("nexus_mic_issued_total", "kind" => "renewal").increment(1);
                tracing::info!(node = %caller.node_id, "renewed a node certificate");
                PeerResponse::Renewed {
                    cert_pem,
                    intermediates_pem: self
                        .fleet
                        .store()
                        .intermediates()
                        .iter()
                        .map(|d| der_to_pem(d))
                        .collect(),
                }
            }
            Ok(Err(err)) => refused("issue_failed", format!("{err:#}")),
            Err(err) => refused("internal", err.to_string()),
        }
    }

    /// Sends `request` to the node `node` at `addr` and waits for the answer.
    pub async fn request(
        &self,
        node: NodeId,
        addr: SocketAddr,
        request: &PeerRequest,
    ) -> anyhow::Result<PeerResponse> {
        self.exchange(addr, &nexus_ca::node_server_name(&node), request)
            .await
            .with_context(|| format!("asking node {node} at {addr}"))
    }

    /// Sends `request` to whichever fleet member answers at `addr` (its identity is not known
    /// in advance; the answer must authenticate itself).
    pub async fn request_at(
        &self,
        addr: SocketAddr,
        request: &PeerRequest,
    ) -> anyhow::Result<PeerResponse> {
        self.exchange(addr, nexus_ca::ANCHOR_SERVER_NAME, request)
            .await
            .with_context(|| format!("asking the member at {addr}"))
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        server_name: &str,
        request: &PeerRequest,
    ) -> anyhow::Result<PeerResponse> {
        let body = serde_json::to_vec(request)?;
        let exchange = async {
            let connection = self.connection_to(addr, server_name).await?;
            let (mut send, mut recv) = match connection.open_bi().await {
                Ok(streams) => streams,
                Err(_) => {
                    // The cached connection died under us (the peer restarted): once more on a
                    // fresh one.
                    lock(&self.outgoing).remove(&(addr, server_name.to_string()));
                    self.connection_to(addr, server_name)
                        .await?
                        .open_bi()
                        .await?
                }
            };
            send.write_all(&body).await?;
            send.finish()?;
            let bytes = recv.read_to_end(MAX_MESSAGE).await?;
            anyhow::Ok(serde_json::from_slice::<PeerResponse>(&bytes)?)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("no answer from {addr} within 5 s"))?
    }

    /// A live connection to `addr` under `server_name`: a cached one (one handshake per peer,
    /// not per request; idle ones close after 10 s), or a new one.
    async fn connection_to(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> anyhow::Result<quinn::Connection> {
        let key = (addr, server_name.to_string());
        if let Some(connection) = lock(&self.outgoing).get(&key)
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let connection = self
            .endpoint
            .connect_with(self.client.clone(), addr, server_name)?
            .await?;
        let mut outgoing = lock(&self.outgoing);
        outgoing.retain(|_, c| c.close_reason().is_none());
        outgoing.insert(key, connection.clone());
        Ok(connection)
    }

    /// Installs the CRLs that verify and are newer than the ones held, persists them, and
    /// closes connections of peers they revoke. Returns how many were new.
    pub async fn accept_crls(&self, ders: Vec<Vec<u8>>) -> usize {
        let mut new = 0;
        for der in ders {
            match self.fleet.install_crl(&der) {
                Ok(Installed::New { number, issuer }) => {
                    new += 1;
                    let issuer = hex::encode(issuer);
                    let store = self.store.clone();
                    let saved =
                        tokio::task::spawn_blocking(move || store.save_crl(&issuer, number, &der))
                            .await;
                    if !matches!(saved, Ok(Ok(()))) {
                        tracing::error!("cannot persist a CRL; it is enforced until restart");
                    }
                    metrics::counter!("nexus_crl_installed_total").increment(1);
                    tracing::info!(number, "installed a newer revocation list");
                }
                Ok(Installed::Stale { .. }) => {}
                Err(err) => {
                    metrics::counter!("nexus_crl_refused_total").increment(1);
                    tracing::warn!(error = %err, "refused a revocation list");
                }
            }
        }
        if new > 0 {
            metrics::gauge!("nexus_revoked_certificates")
                .set(self.fleet.revocations().len() as f64);
            self.close_revoked();
        }
        new
    }

    /// Closes established peer connections whose certificate is now revoked.
    fn close_revoked(&self) {
        let revocations = self.fleet.revocations();
        // Connections this node opened, to a peer whose certificate is now revoked.
        lock(&self.outgoing).retain(|_, connection| {
            let serial = connection
                .peer_identity()
                .and_then(|any| {
                    any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                        .ok()
                })
                .and_then(|chain| chain.first().and_then(|c| read_mic(c).ok()))
                .map(|mic| mic.serial_hex);
            if serial.is_some_and(|s| revocations.is_revoked(&s)) {
                connection.close(3u32.into(), b"certificate revoked");
                false
            } else {
                true
            }
        });
        lock(&self.connections).retain(|_, (serial, connection)| {
            if revocations.is_revoked(serial) {
                connection.close(3u32.into(), b"certificate revoked");
                metrics::counter!("nexus_peer_connections_refused_total", "reason" => "revoked")
                    .increment(1);
                false
            } else {
                true
            }
        });
    }

    /// Revokes certificates this anchor issued; the new CRL is durable and enforced locally
    /// before this returns, then pushed to every live member in the background.
    pub async fn revoke(
        self: &Arc<Self>,
        serials: Vec<String>,
        reason: nexus_ca::RevokeReason,
    ) -> anyhow::Result<Revocation> {
        let Some(anchor) = self.anchor.clone() else {
            bail!("this node is not an anchor");
        };
        let revoking = !serials.is_empty();
        let store = self.store.clone();
        let signer = anchor.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            store.revoke_certificates(
                &signer.issuer,
                &serials,
                reason.as_str(),
                |number, rows: &[CertificateRow]| {
                    let revoked: Vec<nexus_ca::Revoked> = rows
                        .iter()
                        .map(|row| nexus_ca::Revoked {
                            serial_hex: row.serial.clone(),
                            revoked_at_unix: (row.revoked_at_ms.unwrap_or(0) / 1000) as i64,
                            reason: row
                                .revoke_reason
                                .as_deref()
                                .and_then(|r| r.parse().ok())
                                .unwrap_or(nexus_ca::RevokeReason::Unspecified),
                        })
                        .collect();
                    signer.ca.issue_crl(number, &revoked, CRL_VALIDITY)
                },
            )
        })
        .await??;
        let Some((number, der)) = outcome? else {
            return Ok(Revocation { crl_number: None });
        };
        if revoking {
            metrics::counter!("nexus_mic_revoked_total").increment(1);
        }
        self.accept_crls(vec![der.clone()]).await;
        self.mesh
            .publish(GOSSIP_KEY_CRL, &format!("{}:{number}", anchor.issuer))
            .await;
        let service = self.clone();
        tokio::spawn(async move { service.push(der).await });
        Ok(Revocation {
            crl_number: Some(number),
        })
    }

    /// On anchors: signs a first (empty) CRL if none exists yet, or a fresh one when the held
    /// list is past half its validity, so standard tools always find a current list.
    pub async fn refresh_own_crl(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(anchor) = &self.anchor else {
            return Ok(());
        };
        let issuer = anchor.ca.fingerprint();
        let fresh = self.fleet.revocations().crls().into_iter().any(|(crl, _)| {
            crl.issuer_fingerprint == issuer
                && crl.next_update_unix - now_unix() > (CRL_VALIDITY.as_secs() / 2) as i64
        });
        if !fresh {
            self.revoke(Vec::new(), nexus_ca::RevokeReason::Unspecified)
                .await?;
        }
        Ok(())
    }

    /// On anchors: revokes the certificates this anchor issued to nodes an operator
    /// decommissioned (wherever the decommission was requested).
    async fn retire_decommissioned(self: &Arc<Self>) {
        if self.anchor.is_none() {
            return;
        }
        let pending: Vec<NodeId> = {
            let retired = lock(&self.retired);
            self.mesh
                .members()
                .into_iter()
                .filter(|m| m.status == NodeStatus::Decommissioned && !retired.contains(&m.node_id))
                .map(|m| m.node_id)
                .collect()
        };
        for node in pending {
            let store = self.store.clone();
            let id = node.to_string();
            let serials = tokio::task::spawn_blocking(move || store.certificates(Some(&id))).await;
            let serials: Vec<String> = match serials {
                Ok(Ok(rows)) => rows
                    .into_iter()
                    .filter(|r| r.revoked_at_ms.is_none())
                    .map(|r| r.serial)
                    .collect(),
                _ => continue,
            };
            if !serials.is_empty() {
                match self
                    .revoke(serials, nexus_ca::RevokeReason::CessationOfOperation)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(node = %node, "revoked the certificates of a decommissioned node")
                    }
                    Err(err) => {
                        tracing::error!(node = %node, error = %format!("{err:#}"), "cannot revoke a decommissioned node's certificates");
                        continue;
                    }
                }
            }
            lock(&self.retired).insert(node);
        }
    }

    /// Publishes this anchor's current CRL number (at start).
    pub async fn publish_crl_number(&self) {
        if let Some(anchor) = &self.anchor
            && let Some(number) = self
                .fleet
                .revocations()
                .number_from(&anchor.ca.fingerprint())
        {
            self.mesh
                .publish(GOSSIP_KEY_CRL, &format!("{}:{number}", anchor.issuer))
                .await;
        }
    }

    fn live_peers(&self) -> Vec<(NodeId, SocketAddr)> {
        self.mesh
            .members()
            .into_iter()
            .filter(|m| m.node_id != self.node_id)
            .filter(|m| {
                matches!(
                    m.status,
                    NodeStatus::Online | NodeStatus::Degraded | NodeStatus::Draining
                )
            })
            .filter_map(|m| Some((m.node_id, m.info?.quic_addr)))
            .collect()
    }

    async fn push(self: Arc<Self>, der: Vec<u8>) {
        let request = PeerRequest::PushCrls {
            crls: vec![STANDARD.encode(&der)],
        };
        let limit = Arc::new(tokio::sync::Semaphore::new(PUSH_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for (node, addr) in self.live_peers() {
            let (service, request, limit) = (self.clone(), request.clone(), limit.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (node, service.request(node, addr, &request).await)
            });
        }
        let (mut ok, mut failed) = (0, 0);
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((_, Ok(PeerResponse::Installed { .. }))) => ok += 1,
                Ok((node, Ok(other))) => {
                    failed += 1;
                    tracing::debug!(node = %node, answer = ?other, "CRL push not accepted");
                }
                Ok((node, Err(err))) => {
                    failed += 1;
                    // A revoked node refuses our handshake too; gossip tells everyone else.
                    tracing::debug!(node = %node, error = %format!("{err:#}"), "CRL push failed");
                }
                Err(_) => failed += 1,
            }
        }
        tracing::info!(
            pushed = ok,
            failed,
            "revocation list pushed to live members"
        );
    }

    /// Pulls CRLs that gossip says are newer than ours, renews our MIC when due, and keeps
    /// anchors' CRLs fresh. Runs until the node stops.
    pub async fn maintain(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        // Transparency work (mirroring, strict-mode proofs) talks to other anchors and may wait
        // on slow ones: it runs in its own loop so revocation and renewal never wait behind it.
        let logs = tokio::spawn(self.clone().log_loop(stop.clone()));
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew_after = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    logs.abort();
                    return;
                }
                _ = tick.tick() => {}
            }
            self.pull_newer_crls().await;
            self.retire_decommissioned().await;
            self.sync_fleet_state().await;
            if tokio::time::Instant::now() >= renew_after {
                if let Err(err) = self.refresh_own_crl().await {
                    tracing::error!(error = %format!("{err:#}"), "cannot sign this anchor's CRL");
                }
                if let Err(err) = self.renew_intermediate_if_due().await {
                    tracing::warn!(error = %format!("{err:#}"), "anchor CA renewal failed; retrying");
                }
                match self.renew_if_due().await {
                    Ok(()) => renew_after = tokio::time::Instant::now() + Duration::from_secs(1),
                    Err(err) => {
                        metrics::counter!("nexus_mic_renewals_total", "outcome" => "failed")
                            .increment(1);
                        tracing::warn!(error = %format!("{err:#}"), "certificate renewal failed; retrying");
                        renew_after = tokio::time::Instant::now() + Duration::from_secs(5);
                    }
                }
            }
        }
    }

    async fn log_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            self.confirm_logged_peers().await;
            self.mirror_logs().await;
        }
    }

    async fn pull_newer_crls(&self) {
        let published = self.mesh.published(GOSSIP_KEY_CRL).await;
        for (anchor, value) in published {
            if anchor == self.node_id {
                continue;
            }
            let Some((issuer, number)) = value.split_once(':') else {
                continue;
            };
            let (Ok(issuer), Ok(number)) = (hex::decode(issuer), number.parse::<u64>()) else {
                continue;
            };
            let Ok(issuer) = <[u8; 32]>::try_from(issuer) else {
                continue;
            };
            if self
                .fleet
                .revocations()
                .number_from(&issuer)
                .is_some_and(|held| held >= number)
            {
                continue;
            }
            let Some(addr) = self
                .mesh
                .member(&anchor)
                .and_then(|m| m.info.map(|i| i.quic_addr))
            else {
                continue;
            };
            match self.request(anchor, addr, &PeerRequest::Crls).await {
                Ok(PeerResponse::Crls { crls }) => {
                    let ders = crls
                        .iter()
                        .filter_map(|c| STANDARD.decode(c).ok())
                        .collect();
                    self.accept_crls(ders).await;
                }
                Ok(other) => tracing::debug!(answer = ?other, "unexpected CRL answer"),
                Err(err) => {
                    tracing::debug!(anchor = %anchor, error = %format!("{err:#}"), "cannot fetch CRL")
                }
            }
        }
    }

    /// Renews this node's MIC if less than the renewal window is left.
    pub async fn renew_if_due(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.renewing.lock().await;
        let current = read_mic(&self.credentials.mic_der())?;
        metrics::gauge!("nexus_mic_expires_at_seconds").set(current.not_after_unix as f64);
        let lifetime = (current.not_after_unix - current.not_before_unix - nexus_ca::BACKDATE_SECS)
            .max(0) as u64;
        let window = self.renew_before.as_secs().min(lifetime / 3).max(1);
        let left = current.not_after_unix - now_unix();
        if left > window as i64 {
            return Ok(());
        }
        tracing::info!(left_s = left, "renewing this node's certificate");
        let csr = self.key.csr_pem()?;
        let (cert_pem, intermediates) = match &self.anchor {
            Some(anchor) => {
                let profile = MicProfile {
                    fleet_id: current.fleet_id.clone(),
                    node_id: current.node_id,
                    tenant: current.tenant.clone(),
                    site: current.site.clone(),
                    role: current.role,
                    validity: anchor.mic_lifetime,
                };
                let der = anchor.ca.issue_mic(&self.key.public_key(), &profile)?;
                let cert_pem = der_to_pem(&der);
                self.store.record_certificate(
                    &Enrollment {
                        serial: read_mic(&der)?.serial_hex,
                        node_id: self.node_id.to_string(),
                        cert_pem: cert_pem.clone(),
                    },
                    "renewal",
                )?;
                (cert_pem, Vec::new())
            }
            None => self.renew_from_anchor(&csr).await?,
        };
        self.install_mic(&cert_pem, &intermediates).await?;
        metrics::counter!("nexus_mic_renewals_total", "outcome" => "renewed").increment(1);
        Ok(())
    }

    async fn renew_from_anchor(&self, csr: &str) -> anyhow::Result<(String, Vec<String>)> {
        let anchors: Vec<(NodeId, SocketAddr)> = self
            .mesh
            .members()
            .into_iter()
            .filter(|m| m.status == NodeStatus::Online)
            .filter_map(|m| {
                let info = m.info?;
                (info.role == Role::Anchor).then_some((m.node_id, info.quic_addr))
            })
            .collect();
        if anchors.is_empty() {
            bail!("no anchor is online to renew this node's certificate");
        }
        let mut last = anyhow::anyhow!("no anchor answered");
        for (anchor, addr) in anchors {
            let request = PeerRequest::Renew {
                csr_pem: csr.to_string(),
            };
            match self.request(anchor, addr, &request).await {
                Ok(PeerResponse::Renewed {
                    cert_pem,
                    intermediates_pem,
                }) => return Ok((cert_pem, intermediates_pem)),
                Ok(PeerResponse::Refused { code, message }) => {
                    last = anyhow::anyhow!("anchor {anchor} refused ({code}): {message}")
                }
                Ok(other) => last = anyhow::anyhow!("anchor {anchor} answered {other:?}"),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    /// Checks and installs a renewed MIC: on disk (atomically), for TLS and for gossip.
    async fn install_mic(&self, cert_pem: &str, intermediates: &[String]) -> anyhow::Result<()> {
        for pem in intermediates {
            for der in pem_to_der(pem)? {
                if let Err(err) = self.fleet.add_intermediate(der) {
                    tracing::warn!(error = %err, "ignoring an intermediate the anchor sent");
                }
            }
        }
        let der = pem_to_der(cert_pem)?
            .into_iter()
            .next()
            .context("the anchor sent no certificate")?;
        let mic = self
            .fleet
            .verify_peer(&der, &[], now_unix())
            .context("the renewed certificate does not verify")?;
        if mic.public_key != self.key.public_key() {
            bail!("the renewed certificate is for another key");
        }
        let current = read_mic(&self.credentials.mic_der())?;
        if mic.role == current.role && mic.not_after_unix <= current.not_after_unix {
            // Capped by an issuing CA that expires first: renewing again would not help until
            // that CA is renewed.
            bail!(
                "the renewed certificate expires no later than the current one (its issuing CA \
                 expires first); waiting for the anchor CA to be renewed"
            );
        }
        let store = self.fleet.store();
        let mut chain = vec![der.clone()];
        chain.extend(store.intermediates().iter().cloned());
        chain.push(store.root_der().to_vec());
        let intermediates_pem: String = store
            .intermediates()
            .iter()
            .map(|d| der_to_pem(d))
            .collect();
        datadir::write_public(&self.dir.trust_intermediates(), &intermediates_pem)?;
        datadir::write_public(&self.dir.node_cert(), &der_to_pem(&der))?;
        self.credentials.replace(chain, &self.key)?;
        self.mesh.set_certificate(der);
        let info = {
            let mut info = lock(&self.info);
            info.mic_serial = mic.serial_hex.clone();
            info.mic_not_after_ms = (mic.not_after_unix.max(0) as u64) * 1000;
            info.clone()
        };
        self.mesh.set_info(&info).await;
        metrics::gauge!("nexus_mic_expires_at_seconds").set(mic.not_after_unix as f64);
        tracing::info!(serial = %mic.serial_hex, not_after = mic.not_after_unix, "certificate renewed");
        Ok(())
    }
}
