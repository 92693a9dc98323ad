//! The running node: binds its sockets, loads its identity, and runs gossip, the QUIC endpoint
//! (join service on anchors) and the HTTP API until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nexus_ca::{Credentials, FleetTrust, NodeId, NodeKey, Role, TrustStore, pem_to_der};
use nexus_mesh::{GossipAuth, GossipAuthConfig, Member, Mesh, MeshConfig, NodeInfo, UdpDatagrams};
use tokio::sync::watch;

use crate::backend::NodeBackend;
use crate::config::NodeConfig;
use crate::datadir::{self, DataDir};
use crate::enroll::{ALPN_JOIN, Admitter};
use crate::peer::{ALPN_PEER, AnchorCa, PeerService};
use crate::store::Store;

/// Sets up `tracing` to stderr. `NEXUS_LOG` (or `RUST_LOG`) overrides `default_filter`.
pub fn init_logging(default_filter: &str) {
    let filter = std::env::var("NEXUS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_filter.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a node's stderr is usually a log file or journald.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The node's three sockets, bound by the binary before anything else happens.
pub struct Sockets {
    api: TcpListener,
    gossip: UdpSocket,
    quic: UdpSocket,
    /// The failure detector's socket (on the gossip IP, any port; published in gossip).
    probe: Option<UdpSocket>,
}

fn bind_error(what: &str, addr: SocketAddr, flag: &str, err: std::io::Error) -> anyhow::Error {
    let hint = match err.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!(
                "another process (perhaps another nexus node) already uses it; choose another with --{flag}"
            )
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!("no interface of this machine has that address; choose another with --{flag}")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("ports below 1024 need privileges; choose another with --{flag}")
        }
        _ => format!("choose another with --{flag}"),
    };
    anyhow::anyhow!("cannot bind the {what} address {addr}: {err}: {hint}")
}

impl Sockets {
    /// Binds the API (TCP), gossip (UDP) and QUIC (UDP) addresses.
    pub fn bind(config: &NodeConfig) -> anyhow::Result<Sockets> {
        let api =
            TcpListener::bind(config.api).map_err(|e| bind_error("API", config.api, "api", e))?;
        let gossip = UdpSocket::bind(config.gossip)
            .map_err(|e| bind_error("gossip", config.gossip, "gossip", e))?;
        let quic =
            UdpSocket::bind(config.quic).map_err(|e| bind_error("QUIC", config.quic, "quic", e))?;
        api.set_nonblocking(true)?;
        let probe = match config.detector {
            Some(_) => {
                let addr = SocketAddr::new(gossip.local_addr()?.ip(), 0);
                Some(
                    UdpSocket::bind(addr)
                        .map_err(|e| bind_error("failure detector", addr, "gossip", e))?,
                )
            }
            None => None,
        };
        Ok(Sockets {
            api,
            gossip,
            quic,
            probe,
        })
    }
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("nexus_api_request_duration_seconds".to_string()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        )
        .context("configuring metrics")?
        .set_buckets_for_metric(
            Matcher::Full("nexus_config_change_apply_lag_seconds".to_string()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .context("configuring metrics")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    Ok(handle)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Everything loaded from the data directory at start.
pub struct Loaded {
    /// The node key.
    pub key: Arc<NodeKey>,
    /// The node MIC.
    pub mic_der: Vec<u8>,
    /// Root and intermediates.
    pub trust: TrustStore,
    /// Stored identity.
    pub identity: crate::store::Identity,
    /// Parsed role.
    pub role: Role,
}

fn load(dir: &DataDir, store: &Store) -> anyhow::Result<Loaded> {
    let identity = store.identity()?.with_context(|| {
        format!(
            "{} holds no node identity: run `nexus init` or `nexus join`",
            dir.db().display()
        )
    })?;
    let key = NodeKey::from_pkcs8_pem(&datadir::read(&dir.node_key())?)
        .with_context(|| format!("reading {}", dir.node_key().display()))?;
    let mic_der = pem_to_der(&datadir::read(&dir.node_cert())?)?
        .into_iter()
        .next()
        .with_context(|| format!("{} holds no certificate", dir.node_cert().display()))?;
    let root = pem_to_der(&datadir::read(&dir.trust_root())?)?
        .into_iter()
        .next()
        .with_context(|| format!("{} holds no certificate", dir.trust_root().display()))?;
    let intermediates = pem_to_der(&datadir::read(&dir.trust_intermediates())?)?;
    let mut trust = TrustStore::new(root, intermediates)?;
    // Before the MIC is checked: a tenant CA may have issued it.
    crate::tenant_ca::load_trusted(dir, &mut trust)?;
    let mic = trust
        .verify_mic(&mic_der, (crate::now_ms() / 1000) as i64)
        .with_context(|| {
            format!(
                "this node's certificate {} is not valid",
                dir.node_cert().display()
            )
        })?;
    if mic.public_key != key.public_key() {
        bail!(
            "{} does not belong to the key in {}",
            dir.node_cert().display(),
            dir.node_key().display()
        );
    }
    if mic.node_id.to_string() != identity.node_id || trust.fleet_id() != identity.fleet_id {
        bail!(
            "the certificate in {} does not match the identity in {}",
            dir.node_cert().display(),
            dir.db().display()
        );
    }
    let role = identity.role.parse::<Role>()?;
    Ok(Loaded {
        key: Arc::new(key),
        mic_der,
        trust,
        identity,
        role,
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs the node until SIGINT or SIGTERM.
/// Why a node stopped.
pub enum Exit {
    /// SIGINT or SIGTERM.
    Stopped,
    /// It must start again with a changed identity (it became an anchor), on the same addresses.
    Restart {
        /// The API address it had bound.
        api: SocketAddr,
        /// The gossip address.
        gossip: SocketAddr,
        /// The QUIC address.
        quic: SocketAddr,
    },
}

/// Runs the node until SIGINT or SIGTERM (or until it must restart as an anchor).
pub async fn run(dir: DataDir, config: NodeConfig, sockets: Sockets) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let store = Arc::new(Store::open(&dir.db())?);
    let loaded = load(&dir, &store)?;
    let metrics = install_metrics()?;
    let node_id: NodeId = loaded.key.node_id();
    let own_mic = nexus_ca::read_mic(&loaded.mic_der)?;

    // Trust as the node enforces it: the fleet root, the anchors' CAs, and every CRL stored by
    // earlier runs, all in place before the first datagram or handshake is accepted.
    let fleet = FleetTrust::new(loaded.trust.clone());
    fleet.require_logged(config.require_logged);
    for der in store.crls()? {
        if let Err(err) = fleet.install_crl(&der) {
            tracing::warn!(error = %err, "a stored revocation list no longer verifies");
        }
    }
    metrics::gauge!("nexus_revoked_certificates").set(fleet.revocations().len() as f64);
    // [MIC, its tenant CA if one issued it, anchor CAs…, root].
    let chain = loaded.trust.chain_for(&loaded.mic_der);
    let credentials = Credentials::new(chain, &loaded.key)?;

    // The NIC opens first: a node that cannot drive it says so before it joins the fleet.
    let dataplane = Arc::new(
        crate::dataplane::DataPlane::start(&config.nic, node_id)
            .context("starting the data plane (`--nic` / config key `nic`)")?,
    );
    let api_addr = sockets.api.local_addr()?;
    let gossip_addr = sockets.gossip.local_addr()?;
    let quic_addr = sockets.quic.local_addr()?;
    let info = NodeInfo {
        hostname: hostname(),
        role: loaded.role,
        site: loaded.identity.site.clone(),
        tenant: loaded.identity.tenant.clone(),
        labels: loaded.identity.labels.clone(),
        api_addr,
        quic_addr,
        nexlink_version: env!("CARGO_PKG_VERSION").to_string(),
        nexroute_version: env!("CARGO_PKG_VERSION").to_string(),
        nic_model: dataplane.info().model.clone(),
        nic_backend: dataplane.info().backend.to_string(),
        firmware_version: String::new(),
        // What the MIC grants, so the fleet view matches what peers verify.
        capabilities: own_mic.capabilities.clone(),
        trust_level: own_mic.trust_level,
        config_version: 0,
        created_at_ms: loaded.identity.created_at_ms,
        mic_serial: own_mic.serial_hex.clone(),
        mic_not_after_ms: (own_mic.not_after_unix.max(0) as u64) * 1000,
    };

    let restored: Vec<Member> = store
        .members()?
        .iter()
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect();
    let mut seeds: Vec<SocketAddr> = config.seeds.clone();
    seeds.extend(
        store
            .seeds()?
            .iter()
            .filter_map(|s| s.parse::<SocketAddr>().ok()),
    );
    seeds.extend(
        restored
            .iter()
            .filter(|m| m.node_id != node_id)
            .filter_map(|m| m.gossip_addr),
    );
    seeds.sort();
    seeds.dedup();

    let mut auth = GossipAuth::new(
        loaded.key.clone(),
        loaded.mic_der.clone(),
        loaded.trust.clone(),
        GossipAuthConfig::default(),
    );
    auth.enforce_revocations(fleet.clone());
    // Before the first datagram: a decommissioned node is never let back in, not even briefly.
    for denied in store.denied()? {
        if let Ok(id) = denied.parse::<NodeId>() {
            auth.deny(id);
        }
    }
    // Also the automerge actor's incarnation: never repeats for this node.
    let generation = store.next_generation(crate::now_ms())?;
    let mesh = Arc::new(
        Mesh::start(
            MeshConfig {
                fleet_id: loaded.identity.fleet_id.clone(),
                node_id,
                generation,
                gossip_interval: config.gossip_interval,
                seeds,
                membership: config.membership.clone(),
                tick_interval: Duration::from_millis(100),
                dead_incarnation_grace: nexus_mesh::DEAD_INCARNATION_GRACE,
                wan_seeds: Vec::new(),
                clock: nexus_mesh::Clock::system(),
                observer: None,
                detector: config.detector.clone().unwrap_or_default(),
                rumor: nexus_mesh::RumorConfig::quiet_also(&[
                    crate::replication::GOSSIP_PREFIX_CONFIG,
                ]),
            },
            Box::new(UdpDatagrams::new(sockets.gossip)?),
            None,
            match sockets.probe {
                Some(probe) => {
                    Some(Box::new(UdpDatagrams::new(probe)?) as Box<dyn nexus_mesh::Datagrams>)
                }
                None => None,
            },
            auth,
            &info,
            restored,
        )
        .await?,
    );

    // QUIC: the join service (anchors) and the peer protocol (every node, mutual TLS).
    let tls = nexus_ca::member_server_config(
        credentials.clone(),
        fleet.clone(),
        &[ALPN_JOIN, ALPN_PEER],
    )?;
    let quic_tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("building the QUIC server configuration")?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quinn::ServerConfig::with_crypto(Arc::new(quic_tls))),
        sockets.quic,
        Arc::new(quinn::TokioRuntime),
    )
    .context("starting the QUIC endpoint")?;
    let anchor_ca = if loaded.role == Role::Anchor {
        // Blocks briefly at start: scrypt for an encrypted key file, or a token login.
        let ca =
            crate::cakeys::load_anchor_ca(&dir).context("loading this anchor's intermediate CA")?;
        tracing::info!(key = %ca.key_description(), "anchor CA loaded");
        let root = crate::cakeys::load_root_ca(&dir)
            .context("loading the fleet root CA")?
            .map(Arc::new);
        Some(Arc::new(AnchorCa {
            issuer: hex::encode(ca.fingerprint()),
            ca: Arc::new(ca),
            mic_lifetime: config.mic_lifetime,
            ca_lifetime: config.ca_lifetime,
            root,
        }))
    } else {
        None
    };
    // Before anything can issue or revoke: from here on the store logs both.
    let transparency = match &anchor_ca {
        Some(anchor) => {
            let (store, ca) = (store.clone(), anchor.ca.clone());
            let log = tokio::task::spawn_blocking(move || {
                crate::transparency::Transparency::open(store, ca, node_id)
            })
            .await?
            .context("loading this anchor's transparency log")?;
            Some(Arc::new(log))
        }
        None => None,
    };
    let remote_uses: crate::peer::RemoteUses = Default::default();
    let (restart_tx, mut restart_rx) = watch::channel(false);
    let peer = PeerService::new(
        fleet.clone(),
        credentials.clone(),
        loaded.key.clone(),
        store.clone(),
        dir.clone(),
        mesh.clone(),
        anchor_ca,
        endpoint.clone(),
        config.mic_renew_before,
        info.clone(),
        restart_tx,
        remote_uses.clone(),
    );
    if let Some(log) = &transparency {
        let store = store.clone();
        let mirrors = tokio::task::spawn_blocking(move || crate::mirror::Mirrors::open(store))
            .await?
            .context("loading the mirrored transparency logs")?;
        peer.set_logs(log.clone(), Arc::new(mirrors));
    }
    let replication = {
        let (store, fleet, mesh, peer, key, own) = (
            store.clone(),
            fleet.clone(),
            mesh.clone(),
            peer.clone(),
            (*loaded.key).clone(),
            own_mic.clone(),
        );
        Arc::new(
            tokio::task::spawn_blocking(move || {
                crate::replication::Replication::open(
                    store, fleet, mesh, peer, key, &own, generation,
                )
            })
            .await?
            .context("loading the replicated configuration")?,
        )
    };
    peer.set_replication(replication.clone());
    replication
        .ensure_tenant(&loaded.identity.tenant)
        .await
        .context("registering this anchor's tenant in the fleet configuration")?;
    // Anchors' CAs per tenant, and the tenant CAs every node trusts (see tenant_ca.rs).
    let tenant_cas = crate::tenant_ca::TenantCas::new(
        dir.clone(),
        fleet.clone(),
        replication.clone(),
        peer.anchor
            .as_ref()
            .map(|a| (node_id, a.ca.clone(), a.ca_lifetime)),
    )?;
    peer.set_tenant_cas(tenant_cas.clone());
    let admitter = if peer.anchor.is_some() {
        let seeds_mesh = mesh.clone();
        let own_gossip = gossip_addr;
        Some(Arc::new(Admitter {
            store: store.clone(),
            mic_lifetime: config.mic_lifetime,
            remote_uses,
            fleet_id: loaded.identity.fleet_id.clone(),
            root_pem: nexus_ca::der_to_pem(loaded.trust.root_der()),
            intermediates_pem: loaded
                .trust
                .intermediates()
                .iter()
                .map(|d| nexus_ca::der_to_pem(d))
                .collect(),
            seeds: Arc::new(move || {
                let mut seeds = vec![own_gossip.to_string()];
                seeds.extend(
                    seeds_mesh
                        .members()
                        .into_iter()
                        .filter(|m| m.status == nexus_mesh::NodeStatus::Online)
                        .filter_map(|m| m.gossip_addr.map(|a| a.to_string()))
                        .filter(|a| *a != own_gossip.to_string())
                        .take(7),
                );
                seeds
            }),
            tenant_cas: tenant_cas.clone(),
            replication: replication.clone(),
            quota_lock: Default::default(),
        }))
    } else {
        None
    };
    peer.refresh_own_crl()
        .await
        .context("signing this anchor's certificate revocation list")?;
    peer.publish_crl_number().await;
    peer.publish_anchor_state()
        .await
        .context("publishing this anchor's CA and tokens")?;
    let join_service = tokio::spawn(crate::enroll::serve_joins(
        endpoint.clone(),
        admitter,
        peer.clone(),
    ));

    let audit = crate::audit::AuditLog::open(&dir.audit_db(), loaded.key.node_id())
        .context("opening the audit log")?;
    peer.set_audit(audit.clone());
    let usage = crate::usage::Usage::open(
        store.clone(),
        node_id,
        &loaded.identity.tenant,
        loaded.role,
        config.usage_report_interval,
        config.usage_retention,
    )
    .context("opening the usage meter")?;
    peer.set_usage(usage.clone());

    // Before the API serves: a watcher's first event id must postdate the journal's baseline.
    let (events, events_producer) = crate::events::open(crate::events::Sources {
        replication: replication.clone(),
        mesh: mesh.clone(),
        store: store.clone(),
        fleet: fleet.clone(),
    })
    .await?;
    let health = Arc::new(Mutex::new(BTreeMap::from([(
        "store".to_string(),
        "ok".to_string(),
    )])));
    let duties = Arc::new(crate::duties::Duties::new(
        node_id,
        loaded.role,
        mesh.clone(),
        replication.clone(),
        store.clone(),
        config.duties.clone(),
        config.membership.decommission_grace,
    ));
    let backend = Arc::new(
        NodeBackend::new(
            mesh.clone(),
            store.clone(),
            &loaded,
            metrics.clone(),
            health.clone(),
            quic_addr,
            peer.clone(),
        )?
        .with_transparency(transparency)
        .with_replication(replication.clone())
        .with_events(Arc::new(events))
        .with_audit(audit.clone())
        .with_usage(usage.clone())
        .with_duties(duties.clone())
        .with_tenant_cas(tenant_cas.clone()),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::from_std(sockets.api)?;
    let mut api_stop = stop_rx.clone();
    let api_stopped = async move {
        let _ = api_stop.wait_for(|stop| *stop).await;
    };
    let scheme = if config.api_plaintext {
        "http"
    } else {
        "https"
    };
    let mut api = if config.api_plaintext {
        tracing::warn!(api = %api_addr, "serving the API over plain HTTP (http.insecure_plaintext)");
        tokio::spawn(nexus_api::serve(
            listener,
            nexus_api::router(backend),
            api_stopped,
        ))
    } else {
        // HTTPS with this node's MIC; clients may authenticate with theirs (mTLS) or an API key.
        // HTTP/2 (`h2`) carries gRPC on the same port; REST clients may use either.
        let tls = nexus_ca::member_server_config(
            credentials.clone(),
            fleet.clone(),
            &[b"h2", b"http/1.1"],
        )?;
        tokio::spawn(nexus_api::serve_tls(
            listener,
            nexus_api::router(backend),
            Arc::new(tls),
            api_stopped,
        ))
    };

    let endpoints = serde_json::json!({
        "node_id": node_id.to_string(),
        "fleet_id": loaded.identity.fleet_id,
        "role": loaded.role.as_str(),
        "api": format!("{scheme}://{api_addr}"),
        "gossip": gossip_addr.to_string(),
        "quic": quic_addr.to_string(),
        "pid": std::process::id(),
    });
    datadir::write_public(&dir.endpoints(), &format!("{endpoints:#}\n"))?;
    tracing::info!(
        node = %node_id,
        role = loaded.role.as_str(),
        api = %api_addr,
        gossip = %gossip_addr,
        quic = %quic_addr,
        startup_ms = started.elapsed().as_millis() as u64,
        "node serving"
    );

    let maintenance = tokio::spawn(peer.clone().maintain(stop_rx.clone()));
    let audit_shipping = tokio::spawn(crate::audit::ship(
        audit,
        mesh.clone(),
        peer.clone(),
        loaded.key.node_id(),
        stop_rx.clone(),
    ));
    let anti_entropy = tokio::spawn(replication.clone().run(stop_rx.clone()));
    let tenant_trust = tokio::spawn(tenant_cas.clone().run(stop_rx.clone()));
    let usage_task = {
        let dataplane = dataplane.clone();
        tokio::spawn(usage.run(
            move || dataplane.traffic_totals(),
            mesh.clone(),
            peer.clone(),
            stop_rx.clone(),
        ))
    };
    let duties_task = tokio::spawn(duties.run(stop_rx.clone()));
    let events_task = tokio::spawn(events_producer.run(stop_rx.clone()));
    let dataplane_sync = tokio::spawn(crate::dataplane::run(
        dataplane.clone(),
        crate::dataplane::Control {
            replication: replication.clone(),
            mesh: mesh.clone(),
            fleet: fleet.clone(),
            health: health.clone(),
            local: node_id,
            site: loaded.identity.site.clone(),
        },
        stop_rx.clone(),
    ));
    let background = tokio::spawn(background(
        mesh.clone(),
        store.clone(),
        health,
        metrics,
        stop_rx.clone(),
    ));

    let mut evicted = mesh.evicted();
    let mut outcome = Ok(Exit::Stopped);
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = restart_rx.wait_for(|r| *r) => {
            tracing::info!("restarting with the new role");
            outcome = Ok(Exit::Restart { api: api_addr, gossip: gossip_addr, quic: quic_addr });
        }
        _ = evicted.wait_for(|e| *e) => {
            tracing::error!(node = %node_id, "an operator decommissioned this node; stopping");
            outcome = Err(anyhow::anyhow!(
                "node {node_id} was decommissioned by an operator and no longer belongs to the fleet: \
                 to bring this machine back, move {} aside and join again with a new token",
                dir.root().display()
            ));
        }
        result = &mut api => {
            let err = match result {
                Ok(Ok(())) => "stopped unexpectedly".to_string(),
                Ok(Err(err)) => err.to_string(),
                Err(err) => format!("panicked: {err}"),
            };
            tracing::error!(error = %err, "API server failed");
            outcome = Err(anyhow::anyhow!("the API server on {api_addr} failed: {err}"));
        }
    }
    let _ = stop_tx.send(true);
    // Let in-flight API requests finish (bounded) before the runtime goes away.
    if !api.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut api).await;
    }
    endpoint.close(0u32.into(), b"node shutting down");
    join_service.abort();
    maintenance.abort();
    audit_shipping.abort();
    anti_entropy.abort();
    tenant_trust.abort();
    duties_task.abort();
    events_task.abort();
    // Its last save: what was counted since the previous one survives the stop.
    let _ = tokio::time::timeout(Duration::from_secs(5), usage_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), dataplane_sync).await;
    dataplane.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(2), background).await;
    persist_members(&mesh, &store);
    mesh.shutdown();
    let _ = std::fs::remove_file(dir.endpoints());
    outcome
}

fn persist_members(mesh: &Mesh, store: &Store) {
    let members = mesh.members();
    let records: Vec<(String, String)> = members
        .iter()
        .filter_map(|m| Some((m.node_id.to_string(), serde_json::to_string(m).ok()?)))
        .collect();
    let decommissioned: Vec<String> = members
        .iter()
        .filter(|m| m.status == nexus_mesh::NodeStatus::Decommissioned)
        .map(|m| m.node_id.to_string())
        .collect();
    if let Err(err) = store.save_members(&records, &decommissioned) {
        tracing::error!(error = %err, "cannot persist membership");
    }
}

/// Persists membership when it changes, runs the store health check, and keeps the metrics
/// exporter's histograms fresh.
async fn background(
    mesh: Arc<Mesh>,
    store: Arc<Store>,
    health: Arc<Mutex<BTreeMap<String, String>>>,
    metrics: PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = mesh.changes();
    let mut check = tokio::time::interval(Duration::from_secs(2));
    let mut published = "ok".to_string();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                // Coalesce bursts (a whole pool changing at once) into one transaction.
                tokio::time::sleep(Duration::from_millis(200)).await;
                changes.borrow_and_update();
                let (mesh, store) = (mesh.clone(), store.clone());
                let _ = tokio::task::spawn_blocking(move || persist_members(&mesh, &store)).await;
            }
            _ = check.tick() => {
                let store = store.clone();
                let result = tokio::task::spawn_blocking(move || store.touch()).await;
                let verdict = match result {
                    Ok(Ok(())) => "ok".to_string(),
                    Ok(Err(err)) => format!("store: {err}"),
                    Err(err) => format!("store: {err}"),
                };
                // The first failing check is what the node publishes (the data plane adds its own).
                let verdict = {
                    let mut checks = health.lock().unwrap_or_else(|p| p.into_inner());
                    checks.insert("store".to_string(), verdict);
                    checks
                        .values()
                        .find(|v| *v != "ok")
                        .cloned()
                        .unwrap_or_else(|| "ok".to_string())
                };
                if verdict != published {
                    tracing::warn!(health = %verdict, "health changed");
                    mesh.set_health(&verdict).await;
                    published = verdict;
                }
                metrics.run_upkeep();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member remembered as offline since long before a restart is forgotten by the first fold
    /// and leaves the store with the next save, so the restart after that does not bring it back;
    /// one offline for less than `forget_offline_after` is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_offline_past_the_limit_are_forgotten_and_leave_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nexus.db")).unwrap();
        let day = 24 * 3600 * 1000;
        let now = crate::now_ms();
        let record = |n: u8, offline_for_ms: u64| {
            let id = NodeId([n; 16]);
            let json = serde_json::json!({
                "node_id": id, "generation": 1, "gossip_addr": null, "info": null,
                "health": "ok", "self_status": "active", "status": "offline",
                "status_since_ms": now - offline_for_ms,
                "last_heartbeat_ms": now - offline_for_ms - 2_000, "operator": null,
            });
            (id, (id.to_string(), json.to_string()))
        };
        let (long_gone, long_gone_row) = record(1, 8 * day);
        let (recent, recent_row) = record(2, day);
        store
            .save_members(&[long_gone_row, recent_row], &[])
            .unwrap();
        let restored: Vec<Member> = store
            .members()
            .unwrap()
            .iter()
            .map(|json| serde_json::from_str(json).unwrap())
            .collect();
        assert_eq!(restored.len(), 2);

        // A mesh of one, with a fleet PKI of its own, on a loopback port.
        let root = nexus_ca::CertificateAuthority::new_fleet_root("forget.test").unwrap();
        let intermediate = root
            .new_intermediate("forget.test", NodeKey::generate().node_id())
            .unwrap();
        let trust = TrustStore::new(
            root.cert_der().to_vec(),
            vec![intermediate.cert_der().to_vec()],
        )
        .unwrap();
        let key = Arc::new(NodeKey::generate());
        let mic = intermediate
            .issue_mic(
                &key.public_key(),
                &nexus_ca::MicProfile {
                    fleet_id: "forget.test".into(),
                    node_id: key.node_id(),
                    tenant: String::new(),
                    site: "lab-1".into(),
                    role: Role::Node,
                    validity: Duration::from_secs(3600),
                },
            )
            .unwrap();
        let info: NodeInfo = serde_json::from_value(serde_json::json!({
            "hostname": "test", "role": "node", "site": "lab-1", "tenant": "default",
            "api_addr": "127.0.0.1:1", "quic_addr": "127.0.0.1:2", "nexlink_version": "0",
            "nexroute_version": "0", "trust_level": 1, "config_version": 0, "created_at_ms": 0,
        }))
        .unwrap();
        let mesh = Mesh::start(
            MeshConfig {
                fleet_id: "forget.test".into(),
                node_id: key.node_id(),
                generation: now,
                gossip_interval: Duration::from_millis(100),
                seeds: Vec::new(),
                membership: nexus_mesh::MembershipConfig::default(),
                tick_interval: Duration::from_millis(20),
                dead_incarnation_grace: nexus_mesh::DEAD_INCARNATION_GRACE,
                wan_seeds: Vec::new(),
                clock: nexus_mesh::Clock::system(),
                observer: None,
                detector: nexus_mesh::DetectorConfig::default(),
                rumor: nexus_mesh::RumorConfig::default(),
            },
            Box::new(UdpDatagrams::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap()),
            None,
            None,
            GossipAuth::new(key, mic, trust, GossipAuthConfig::default()),
            &info,
            restored,
        )
        .await
        .unwrap();
        let start = Instant::now();
        while mesh.member(&long_gone).is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the long-offline member was never forgotten"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(mesh.member(&recent).is_some(), "the recent one is kept");
        persist_members(&mesh, &store);
        let remembered: Vec<NodeId> = store
            .members()
            .unwrap()
            .iter()
            .map(|json| serde_json::from_str::<Member>(json).unwrap().node_id)
            .collect();
        assert!(!remembered.contains(&long_gone), "{remembered:?}");
        assert!(remembered.contains(&recent), "{remembered:?}");
        mesh.shutdown();
    }
}
