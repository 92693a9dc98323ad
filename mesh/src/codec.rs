//! Chitchat envelope (de)serialization through chitchat's own public `UdpSocket`.
//!
//! chitchat 0.13 keeps `ChitchatEnvelope::serialize`/`deserialize` crate-private: a `Transport`
//! written outside the crate receives typed envelopes and cannot turn them into bytes itself. Rather
//! than re-implementing (and silently diverging from) chitchat's wire format, the codec pairs a
//! chitchat `UdpSocket` with a plain UDP socket, both bound to ephemeral loopback ports: sending an
//! envelope from the chitchat socket to the plain one yields chitchat's exact bytes; sending bytes
//! the other way yields chitchat's own decoding. Each direction costs one loopback round trip
//! (microseconds), negligible at gossip rates.
//!
//! chitchat's socket silently skips undecodable datagrams and keeps waiting, so every decode is
//! followed by a sentinel (a `BadCluster` envelope, which never travels between members of one
//! fleet): receiving the sentinel first means the candidate was undecodable.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use chitchat::transport::{Socket, UdpSocket as ChitchatUdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use tokio::net::UdpSocket;

/// The chitchat message-type code of `BadCluster` (4th byte after magic and version).
const BAD_CLUSTER_CODE: u8 = 3;
/// How long a loopback hop may take before the codec gives up on it.
const HOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Turns chitchat envelopes into bytes and back using chitchat's own implementation.
pub struct ChitchatCodec {
    chitchat: Box<dyn Socket>,
    chitchat_addr: SocketAddr,
    plain: UdpSocket,
    plain_addr: SocketAddr,
    sentinel: Vec<u8>,
    buf: Vec<u8>,
}

impl ChitchatCodec {
    /// Binds the two loopback sockets.
    pub async fn new() -> anyhow::Result<ChitchatCodec> {
        let loopback: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let chitchat = ChitchatUdpSocket::open(loopback).await?;
        let chitchat_addr = chitchat.local_addr()?;
        let plain = UdpSocket::bind(loopback)
            .await
            .context("binding the gossip codec socket on 127.0.0.1")?;
        let plain_addr = plain.local_addr()?;
        let mut codec = ChitchatCodec {
            chitchat: Box::new(chitchat),
            chitchat_addr,
            plain,
            plain_addr,
            sentinel: Vec::new(),
            buf: vec![0u8; crate::auth::MAX_DATAGRAM],
        };
        codec.sentinel = codec
            .encode(ChitchatEnvelope {
                version: ProtocolVersion::V0,
                message: ChitchatMessage::BadCluster,
            })
            .await?;
        Ok(codec)
    }

    /// Serializes an envelope exactly as chitchat would put it on the wire.
    pub async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        self.chitchat.send(self.plain_addr, envelope).await?;
        loop {
            let (len, from) =
                tokio::time::timeout(HOP_TIMEOUT, self.plain.recv_from(&mut self.buf))
                    .await
                    .context("gossip codec: encode hop timed out")??;
            // Anything else on this ephemeral port is some other local process: ignore it.
            if from == self.chitchat_addr {
                return Ok(self.buf[..len].to_vec());
            }
        }
    }

    /// Decodes bytes with chitchat's parser. `Ok(None)`: not a valid chitchat envelope.
    pub async fn decode(&mut self, bytes: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        if bytes.len() < 4 || bytes[3] == BAD_CLUSTER_CODE {
            return Ok(None);
        }
        self.plain.send_to(bytes, self.chitchat_addr).await?;
        self.plain
            .send_to(&self.sentinel, self.chitchat_addr)
            .await?;
        let mut decoded = None;
        loop {
            let outcome = tokio::time::timeout(HOP_TIMEOUT, self.chitchat.recv())
                .await
                .context("gossip codec: decode hop timed out")??;
            if outcome.from_addr != self.plain_addr {
                continue;
            }
            match outcome.envelope.message {
                ChitchatMessage::BadCluster => return Ok(decoded),
                _ if decoded.is_none() => decoded = Some(outcome.envelope),
                _ => bail!("gossip codec: two envelopes decoded from one datagram"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrips_and_rejects_junk() {
        let mut codec = ChitchatCodec::new().await.unwrap();
        let envelope = ChitchatEnvelope {
            version: ProtocolVersion::V1,
            message: ChitchatMessage::Syn {
                cluster_id: "fleet".to_string(),
                digest: Default::default(),
            },
        };
        let bytes = codec
            .encode(ChitchatEnvelope {
                version: ProtocolVersion::V1,
                message: ChitchatMessage::Syn {
                    cluster_id: "fleet".to_string(),
                    digest: Default::default(),
                },
            })
            .await
            .unwrap();
        assert!(bytes.len() > 4);
        assert_eq!(codec.decode(&bytes).await.unwrap(), Some(envelope));
        assert_eq!(codec.decode(b"junk-bytes").await.unwrap(), None);
        assert_eq!(codec.decode(&[]).await.unwrap(), None);
        // The codec stays in step after junk.
        assert!(codec.decode(&bytes).await.unwrap().is_some());
    }
}
