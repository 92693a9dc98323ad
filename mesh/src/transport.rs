//! The gossip transport seam: chitchat's `Transport` over authenticated datagrams.
//!
//! [`AuthenticatedTransport`] wraps any [`Datagrams`] implementation — a bound UDP socket in
//! production ([`UdpDatagrams`]), an in-memory network in tests and simulations
//! ([`MemoryNetwork`]) — and seals/opens every chitchat envelope with [`GossipAuth`].

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use tokio::sync::mpsc;

use crate::auth::{DropReason, GossipAuth, MAX_DATAGRAM};
use crate::codec::ChitchatCodec;

/// A datagram socket: what the authenticated transport needs from the network.
#[async_trait]
pub trait Datagrams: Send + Sync + 'static {
    /// The address peers reach this socket at.
    fn local_addr(&self) -> SocketAddr;
    /// Sends one datagram.
    async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()>;
    /// Receives one datagram into `buf`.
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
}

/// UDP: the production network.
pub struct UdpDatagrams {
    socket: tokio::net::UdpSocket,
    addr: SocketAddr,
}

impl UdpDatagrams {
    /// Takes an already bound socket (libraries never bind: the binary does).
    pub fn new(socket: std::net::UdpSocket) -> io::Result<UdpDatagrams> {
        socket.set_nonblocking(true)?;
        let addr = socket.local_addr()?;
        Ok(UdpDatagrams {
            socket: tokio::net::UdpSocket::from_std(socket)?,
            addr,
        })
    }
}

#[async_trait]
impl Datagrams for UdpDatagrams {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket.send_to(bytes, to).await.map(|_| ())
    }
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }
}

/// An in-memory datagram network with removable links, for tests and simulations.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<MemoryState>>,
}

#[derive(Default)]
struct MemoryState {
    sockets: HashMap<SocketAddr, mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>>,
    cut: HashSet<(SocketAddr, SocketAddr)>,
}

impl MemoryNetwork {
    /// Creates a socket at `addr`. Fails if the address is taken.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<MemoryDatagrams> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        if state.sockets.contains_key(&addr) {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, addr.to_string()));
        }
        state.sockets.insert(addr, tx);
        Ok(MemoryDatagrams {
            network: self.clone(),
            addr,
            rx: tokio::sync::Mutex::new(rx),
        })
    }

    /// Drops traffic between `a` and `b`, both ways, until [`MemoryNetwork::heal`].
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        let mut state = self.lock();
        state.cut.insert((a, b));
        state.cut.insert((b, a));
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Injects a raw datagram as if `from` had sent it (for outsider tests).
    pub fn inject(&self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if let Some(tx) = self.lock().sockets.get(&to) {
            let _ = tx.send((bytes, from));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A poisoned lock only means another test thread panicked; the map is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One socket of a [`MemoryNetwork`].
pub struct MemoryDatagrams {
    network: MemoryNetwork,
    addr: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>>,
}

impl Drop for MemoryDatagrams {
    fn drop(&mut self) {
        self.network.lock().sockets.remove(&self.addr);
    }
}

#[async_trait]
impl Datagrams for MemoryDatagrams {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "datagram too large",
            ));
        }
        let state = self.network.lock();
        if state.cut.contains(&(self.addr, to)) {
            return Ok(());
        }
        if let Some(tx) = state.sockets.get(&to) {
            let _ = tx.send((bytes.to_vec(), self.addr));
        }
        Ok(())
    }
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut rx = self.rx.lock().await;
        let (bytes, from) = rx
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "network dropped"))?;
        let len = bytes.len().min(buf.len());
        buf[..len].copy_from_slice(&bytes[..len]);
        Ok((len, from))
    }
}

/// chitchat `Transport` that authenticates every datagram. It hands out exactly one socket: the
/// pre-bound one it was built with.
pub struct AuthenticatedTransport {
    socket: Mutex<Option<Box<dyn Datagrams>>>,
    auth: Arc<Mutex<GossipAuth>>,
}

impl AuthenticatedTransport {
    /// Wraps `datagrams`, sealing and opening with `auth` (shared so the node can update its deny
    /// list while gossip runs).
    pub fn new(datagrams: Box<dyn Datagrams>, auth: Arc<Mutex<GossipAuth>>) -> Self {
        AuthenticatedTransport {
            socket: Mutex::new(Some(datagrams)),
            auth,
        }
    }
}

#[async_trait]
impl Transport for AuthenticatedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let datagrams = self
            .socket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .context("the gossip socket was already opened")?;
        anyhow::ensure!(
            datagrams.local_addr() == listen_addr,
            "gossip listen address {listen_addr} differs from the bound socket {}",
            datagrams.local_addr()
        );
        let datagrams: Arc<dyn Datagrams> = Arc::from(datagrams);
        // chitchat drops its `recv` future whenever a gossip tick fires first, so receiving must
        // be cancel-safe. The codec's two-step decode is not; it runs in its own task, and `recv`
        // only awaits a channel.
        let (tx, rx) = mpsc::channel(RECEIVE_QUEUE);
        let receiver = tokio::spawn(receive_loop(
            datagrams.clone(),
            ChitchatCodec::new().await?,
            self.auth.clone(),
            tx,
        ));
        Ok(Box::new(AuthenticatedSocket {
            datagrams,
            codec: ChitchatCodec::new().await?,
            auth: self.auth.clone(),
            received: rx,
            receiver,
            last_syn: None,
        }))
    }
}

/// Datagrams decoded ahead of chitchat; past this, the receive loop waits (UDP buffers absorb the
/// rest, as they would without the loop).
const RECEIVE_QUEUE: usize = 256;

async fn receive_loop(
    datagrams: Arc<dyn Datagrams>,
    mut codec: ChitchatCodec,
    auth: Arc<Mutex<GossipAuth>>,
    tx: mpsc::Sender<anyhow::Result<RecvOutcome>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let outcome = receive_one(&*datagrams, &mut codec, &auth, &mut buf).await;
        let fatal = outcome.is_err();
        if tx.send(outcome).await.is_err() || fatal {
            return;
        }
    }
}

async fn receive_one(
    datagrams: &dyn Datagrams,
    codec: &mut ChitchatCodec,
    auth: &Mutex<GossipAuth>,
    buf: &mut [u8],
) -> anyhow::Result<RecvOutcome> {
    loop {
        let (len, from) = match datagrams.recv_from(buf).await {
            Ok(received) => received,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(err) => return Err(err).context("gossip socket receive failed"),
        };
        metrics::counter!("nexus_gossip_bytes_received_total").increment(len as u64);
        let opened = {
            let mut auth = auth.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match auth.open_from(&buf[..len], unix_ms(), from) {
                Ok(opened) => Ok(opened.payload.to_vec()),
                Err(reason @ DropReason::UnknownSender(_)) => {
                    Err((reason, Some(auth.certificate_request(unix_ms()))))
                }
                Err(DropReason::Denied(sender)) => {
                    let notice = auth.eviction_notice(sender, from, unix_ms(), len);
                    Err((DropReason::Denied(sender), notice))
                }
                Err(reason) => Err((reason, None)),
            }
        };
        let payload = match opened {
            Ok(payload) => payload,
            Err((DropReason::CertificateRequested, _)) => continue,
            Err((reason, reply)) => {
                metrics::counter!("nexus_gossip_datagrams_dropped_total", "reason" => reason.label())
                    .increment(1);
                tracing::debug!(%from, %reason, "dropped gossip datagram");
                if let Some(reply) = reply {
                    let _ = datagrams.send_to(&reply, from).await;
                }
                continue;
            }
        };
        let decoded = match codec.decode(&payload).await {
            Ok(decoded) => decoded,
            Err(err) => {
                // The loopback hop lost a packet: start over with fresh codec sockets rather
                // than stop gossip.
                tracing::warn!(error = %format!("{err:#}"), "gossip codec reset");
                metrics::counter!("nexus_gossip_datagrams_dropped_total", "reason" => "codec_error")
                    .increment(1);
                *codec = ChitchatCodec::new().await?;
                continue;
            }
        };
        match decoded {
            Some(envelope) => {
                if matches!(
                    envelope.message,
                    ChitchatMessage::SynAck { .. } | ChitchatMessage::Ack { .. }
                ) {
                    auth.lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .confirm(from, unix_ms());
                }
                metrics::counter!("nexus_gossip_datagrams_received_total").increment(1);
                return Ok(RecvOutcome {
                    from_addr: from,
                    envelope,
                    num_bytes_received: len,
                });
            }
            None => {
                metrics::counter!("nexus_gossip_datagrams_dropped_total", "reason" => "undecodable")
                    .increment(1);
            }
        }
    }
}

struct AuthenticatedSocket {
    datagrams: Arc<dyn Datagrams>,
    /// Encoder for `send`; the receive loop has its own.
    codec: ChitchatCodec,
    auth: Arc<Mutex<GossipAuth>>,
    received: mpsc::Receiver<anyhow::Result<RecvOutcome>>,
    receiver: tokio::task::JoinHandle<()>,
    last_syn: Option<Instant>,
}

impl Drop for AuthenticatedSocket {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// chitchat sends the SYNs of one round back to back; a SYN this long after the previous one
/// starts a new round.
const ROUND_GAP: Duration = Duration::from_millis(20);

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AuthenticatedSocket {
    fn auth(&self) -> std::sync::MutexGuard<'_, GossipAuth> {
        self.auth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Socket for AuthenticatedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.datagrams.local_addr())
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if matches!(envelope.message, ChitchatMessage::Syn { .. }) {
            let now = Instant::now();
            if self
                .last_syn
                .is_none_or(|last| now.duration_since(last) > ROUND_GAP)
            {
                metrics::counter!("nexus_gossip_rounds_total").increment(1);
            }
            self.last_syn = Some(now);
        }
        let payload = match self.codec.encode(envelope).await {
            Ok(payload) => payload,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "gossip codec reset");
                self.codec = ChitchatCodec::new().await?;
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        };
        let Some(sealed) = self.auth().seal_to(&payload, unix_ms(), to) else {
            metrics::counter!("nexus_gossip_datagrams_oversize_total").increment(1);
            tracing::warn!(len = payload.len(), "gossip datagram too large to send");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        // A failed send to one peer (unreachable, refused) is not a broken transport: chitchat
        // would stop gossiping altogether if we returned an error.
        if let Err(err) = self.datagrams.send_to(&sealed, to).await {
            tracing::debug!(%to, %err, "gossip send failed");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        metrics::counter!("nexus_gossip_datagrams_sent_total").increment(1);
        metrics::counter!("nexus_gossip_bytes_sent_total").increment(sealed.len() as u64);
        Ok(SendOutcome {
            num_bytes_sent: sealed.len(),
        })
    }

    /// Cancel-safe: only awaits the receive loop's channel.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        match self.received.recv().await {
            Some(outcome) => outcome,
            None => anyhow::bail!("the gossip receive loop stopped"),
        }
    }
}
