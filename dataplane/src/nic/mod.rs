//! NIC backends: one trait ([`Port`]), three implementations.
//!
//! - [`memory`]: channels, for unit tests and the simulation crate;
//! - [`af_packet`]: Linux packet sockets, for machines without DPDK (always built on Linux);
//! - `dpdk` (cargo feature `dpdk`): poll-mode drivers through a small C shim over libdpdk.
//!
//! A port moves bursts of frames. The engine is generic over the port type, so the per-packet
//! path is monomorphized for each backend: no virtual call per frame.

use std::fmt;
use std::str::FromStr;

pub mod af_packet;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod memory;

/// Frames handed to or taken from a port at once.
pub const BURST: usize = 32;

/// One received (or to-be-sent) frame owned by a backend.
pub trait Packet: Send {
    /// The frame, from the Ethernet header on.
    fn data(&self) -> &[u8];
    /// The frame, writable in place (header rewrites).
    fn data_mut(&mut self) -> &mut [u8];

    /// Hints the CPU to start loading the frame's first bytes (a no-op unless the backend's
    /// buffers live outside the Rust heap's usual locality, as DPDK's mbufs do).
    #[inline(always)]
    fn prefetch(&self) {}

    /// Hints the CPU to start loading the backend's descriptor of the frame (DPDK: the mbuf
    /// header), where finding the frame's bytes starts.
    #[inline(always)]
    fn prefetch_descriptor(&self) {}
}

/// A NIC port (or queue) that receives and transmits bursts of Ethernet frames.
pub trait Port: Send {
    /// The backend's frame buffer.
    type Packet: Packet;

    /// Receives up to `max` frames, appending them to `out`; returns how many arrived.
    ///
    /// May wait a little (at most about 100 ms) when nothing arrives, so a caller that loops on
    /// it can also check for shutdown; poll-mode backends (DPDK) return at once.
    fn rx_burst(&mut self, out: &mut Vec<Self::Packet>, max: usize) -> Result<usize, NicError>;

    /// Transmits the frames in `pkts` (draining it); returns how many the NIC took. Frames it
    /// did not take are freed; the caller counts them as dropped.
    fn tx_burst(&mut self, pkts: &mut Vec<Self::Packet>) -> Result<usize, NicError>;

    /// Frees frames that will not be sent (drops), all at once where the backend can.
    #[inline]
    fn free_burst(&mut self, pkts: &mut Vec<Self::Packet>) {
        pkts.clear();
    }

    /// A new frame holding a copy of `data`, to transmit (traffic generators and tests).
    fn alloc(&mut self, data: &[u8]) -> Result<Self::Packet, NicError>;

    /// What this port is.
    fn info(&self) -> NicInfo;

    /// Whether the backend knows its link to be down (false when it cannot tell).
    fn link_down(&self) -> bool {
        false
    }
}

/// What a port is, for `GET /v1/nodes/{id}` and the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicInfo {
    /// Backend: `dpdk`, `af_packet` or `memory`.
    pub backend: &'static str,
    /// The device: a DPDK driver and port (`net_ring0 (port 0)`), an interface name, or `memory`.
    pub device: String,
    /// The NIC model as the backend knows it (driver name, kernel driver), or empty.
    pub model: String,
    /// MAC address, if the device has one.
    pub mac: Option<[u8; 6]>,
}

/// A NIC backend failure.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device or its configuration was refused; the message says what to change.
    #[error("{0}")]
    Config(String),
    /// The peer of a memory port is gone.
    #[error("the other end of the memory port is closed")]
    Closed,
    /// Out of frame buffers.
    #[error("no frame buffer available (the buffer pool is exhausted)")]
    NoBuffer,
    /// This build has no such backend.
    #[error("{0}")]
    Unsupported(String),
}

impl NicError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> NicError {
        NicError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Which NIC backend a node runs, as given to `nexus run --nic` or `nic = "…"` in the config
/// file.
///
/// - `memory`
/// - `af_packet:<iface>` or `af_packet:<ingress iface>,<egress iface>`
/// - `dpdk:<EAL arguments>`, whitespace-separated; a token `ports=<rx>[,<tx>]` (not an EAL
///   argument) picks the DPDK ports, port 0 for both by default. Example:
///   `dpdk:-l 0 --no-huge -m 64 --no-pci --vdev=net_ring0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NicSpec {
    /// In-process channels.
    Memory,
    /// A Linux packet socket on one interface, or an ingress and an egress interface.
    AfPacket {
        /// Interface frames are received on.
        ingress: String,
        /// Interface frames are sent on (the ingress interface unless given).
        egress: String,
    },
    /// DPDK ports under one EAL.
    Dpdk {
        /// EAL arguments (without the program name).
        eal_args: Vec<String>,
        /// Port frames are received on.
        rx_port: u16,
        /// Port frames are sent on.
        tx_port: u16,
    },
}

impl NicSpec {
    /// The backend name.
    pub fn backend(&self) -> &'static str {
        match self {
            NicSpec::Memory => "memory",
            NicSpec::AfPacket { .. } => "af_packet",
            NicSpec::Dpdk { .. } => "dpdk",
        }
    }
}

const SPEC_HELP: &str =
    "expected `memory`, `af_packet:<iface>[,<egress iface>]` or `dpdk:<EAL arguments>`";

impl FromStr for NicSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<NicSpec, String> {
        let s = s.trim();
        let (kind, rest) = match s.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (s, None),
        };
        match (kind, rest) {
            ("memory", None) => Ok(NicSpec::Memory),
            ("memory", Some(_)) => Err(format!("`{s}`: the memory backend takes no arguments")),
            ("af_packet", Some(ifaces)) => {
                let mut parts = ifaces.split(',').map(str::trim);
                let ingress = parts.next().unwrap_or_default().to_string();
                let egress = parts
                    .next()
                    .map(str::to_string)
                    .unwrap_or_else(|| ingress.clone());
                if parts.next().is_some() {
                    return Err(format!("`{s}`: at most two interfaces (ingress,egress)"));
                }
                for name in [&ingress, &egress] {
                    check_ifname(name).map_err(|e| format!("`{s}`: {e}"))?;
                }
                Ok(NicSpec::AfPacket { ingress, egress })
            }
            ("af_packet", None) => Err(format!("`{s}`: name the interface, e.g. `af_packet:eth1`")),
            ("dpdk", Some(args)) => {
                let mut eal_args = Vec::new();
                let (mut rx_port, mut tx_port) = (0u16, None);
                for token in args.split_whitespace() {
                    if let Some(ports) = token.strip_prefix("ports=") {
                        let mut it = ports.split(',');
                        let parse = |p: Option<&str>| -> Result<Option<u16>, String> {
                            p.map(|p| {
                                p.parse::<u16>().map_err(|_| {
                                    format!("`{token}`: a DPDK port is a number 0..=65535")
                                })
                            })
                            .transpose()
                        };
                        rx_port = parse(it.next())?.unwrap_or(0);
                        tx_port = parse(it.next())?;
                    } else {
                        eal_args.push(token.to_string());
                    }
                }
                if eal_args.is_empty() {
                    return Err(format!(
                        "`{s}`: give the EAL arguments, e.g. `dpdk:-l 0 --no-huge -m 64 \
                         --no-pci --vdev=net_null0`"
                    ));
                }
                Ok(NicSpec::Dpdk {
                    eal_args,
                    rx_port,
                    tx_port: tx_port.unwrap_or(rx_port),
                })
            }
            ("dpdk", None) => Err(format!("`{s}`: give the EAL arguments after `dpdk:`")),
            _ => Err(format!("`{s}`: unknown NIC backend; {SPEC_HELP}")),
        }
    }
}

impl fmt::Display for NicSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NicSpec::Memory => f.write_str("memory"),
            NicSpec::AfPacket { ingress, egress } if ingress == egress => {
                write!(f, "af_packet:{ingress}")
            }
            NicSpec::AfPacket { ingress, egress } => write!(f, "af_packet:{ingress},{egress}"),
            NicSpec::Dpdk {
                eal_args,
                rx_port,
                tx_port,
            } => {
                write!(f, "dpdk:{} ports={rx_port},{tx_port}", eal_args.join(" "))
            }
        }
    }
}

/// Checks a Linux interface name (1..=15 bytes, no `/`, no whitespace).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty interface name".into());
    }
    if name.len() > 15 {
        return Err(format!("interface name `{name}` is longer than 15 bytes"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c == ':' || c.is_control())
    {
        return Err(format!(
            "interface name `{name}` contains `/`, `:` or whitespace"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_backend_and_explains_mistakes() {
        assert_eq!("memory".parse::<NicSpec>(), Ok(NicSpec::Memory));
        assert_eq!(
            "af_packet:veth0".parse::<NicSpec>(),
            Ok(NicSpec::AfPacket {
                ingress: "veth0".into(),
                egress: "veth0".into()
            })
        );
        assert_eq!(
            "af_packet:in0,out0".parse::<NicSpec>(),
            Ok(NicSpec::AfPacket {
                ingress: "in0".into(),
                egress: "out0".into()
            })
        );
        let dpdk: NicSpec = "dpdk:-l 0 --no-huge --vdev=net_ring0 --vdev=net_ring1 ports=0,1"
            .parse()
            .unwrap();
        assert_eq!(
            dpdk,
            NicSpec::Dpdk {
                eal_args: vec![
                    "-l".into(),
                    "0".into(),
                    "--no-huge".into(),
                    "--vdev=net_ring0".into(),
                    "--vdev=net_ring1".into()
                ],
                rx_port: 0,
                tx_port: 1
            }
        );
        for bad in [
            "",
            "eth0",
            "af_packet:",
            "af_packet:a,b,c",
            "dpdk:",
            "dpdk",
            "memory:x",
            "af_packet:averyveryverylongname",
            "dpdk:-l 0 ports=x",
        ] {
            let err = bad.parse::<NicSpec>().unwrap_err();
            assert!(err.contains('`'), "{bad}: {err}");
        }
    }
}
