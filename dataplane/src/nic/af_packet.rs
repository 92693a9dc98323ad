//! The AF_PACKET backend: a Linux packet socket bound to one interface, for machines without DPDK.
//!
//! [`AfPacketPort::open`] binds a raw packet socket (`ETH_P_ALL`) to the interface, puts the
//! interface in promiscuous mode for the socket's lifetime and asks the kernel not to loop the
//! socket's own transmissions back to it. Frames cross as they are on the wire, from the Ethernet
//! header on: the kernel strips 802.1Q tags before packet sockets see a frame, so the port puts
//! them back from the `PACKET_AUXDATA` the kernel attaches.
//!
//! # Why `recvmmsg`/`sendmmsg` and not TPACKET rings
//!
//! One system call moves a whole burst (up to [`BURST`] frames) each way, into buffers the port
//! owns and reuses. The cost against `PACKET_RX_RING`/`PACKET_TX_RING` (`TPACKET_V3`) is one copy
//! of each frame between kernel and user memory and one system call per burst, where rings need
//! neither; in exchange the frames are plain owned buffers that the engine can keep, rewrite in
//! place and hand to another port, there is no mmap'd region of fixed-size slots to size and poll,
//! and the code stays small. This backend is for correctness on machines without DPDK (and for
//! tests on veth pairs), not for line rate: use the DPDK backend for that.
//!
//! # Frames the port does not deliver
//!
//! - Frames longer than the receive buffer (the interface MTU when the port was opened, plus
//!   Ethernet and two VLAN headers; at least 2048 bytes) are dropped and counted
//!   ([`AfPacketStats::rx_truncated`]), never delivered cut short. On a real NIC these are
//!   usually GRO/LRO super-frames: turn them off on an interface the data plane owns
//!   (`ethtool -K <iface> gro off lro off`), and reopen the port after raising the MTU.
//! - Frames the host itself transmits on the interface (including this port's own).
//!
//! # Kernel features relied on
//!
//! `recvmmsg` (Linux 2.6.33), `sendmmsg` (3.0), the VLAN TPID in `PACKET_AUXDATA` (3.14; older
//! kernels report 802.1Q). `PACKET_IGNORE_OUTGOING` (4.20) keeps outgoing frames off the receive
//! queue; on older kernels they are queued and dropped here by their packet type, which costs
//! receive-buffer space. Opening a port needs `CAP_NET_RAW`; the 32 MiB receive buffer needs
//! `CAP_NET_ADMIN` (`SO_RCVBUFFORCE`), without which the kernel caps it at
//! `net.core.rmem_max` and the port logs a warning.
//!
//! # Buffers
//!
//! Each port keeps [`BURST`] receive buffers and a free list. A received frame takes its buffer
//! with it and the slot is refilled from the free list; a transmitted frame's buffer goes back to
//! the free list of the port that sent it. A port that both receives and transmits therefore
//! allocates nothing in steady state; with separate ingress and egress ports the ingress port
//! allocates one buffer per received frame and the egress port frees what its list cannot hold.
#![cfg(target_os = "linux")]
// Packet sockets are reached only through raw system calls (socket, setsockopt, ioctl, recvmmsg,
// sendmmsg) that std does not wrap.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use super::{BURST, NicError, NicInfo, Packet, Port, check_ifname};

/// Receive buffer the port asks for: about 10,000 full-size frames of kernel memory, so a burst
/// of traffic survives while the engine is busy with the previous one.
const RCVBUF_BYTES: libc::c_int = 32 << 20;
/// Send buffer: frames between `sendmmsg` and the driver (the qdisc queue included).
const SNDBUF_BYTES: libc::c_int = 4 << 20;
/// How long `rx_burst` waits for a first frame (the [`Port`] contract says about 100 ms).
const RX_WAIT_MICROS: libc::suseconds_t = 100_000;
/// Smallest receive buffer, whatever the MTU.
const MIN_FRAME: usize = 2048;
const ETH_HLEN: usize = 14;
/// Offset of the EtherType in an Ethernet frame, where a VLAN tag goes.
const TAG_AT: usize = 12;
const VLAN_HLEN: usize = 4;
const ETH_P_8021Q: u16 = 0x8100;
/// Buffers a port keeps on its free list besides its receive slots.
const FREE_MAX: usize = 8 * BURST;

/// `SIOCETHTOOL` command reading the driver information (`linux/ethtool.h`).
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` from `linux/ethtool.h` (not in the `libc` crate).
#[repr(C)]
#[derive(Default)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// Room for the control messages of one received frame (one `PACKET_AUXDATA`, 40 bytes on
/// 64-bit Linux), aligned as `cmsghdr` requires.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct ControlBuf([u8; 64]);

/// A frame received from or to be sent on a packet socket: an owned buffer and the frame's
/// length in it.
pub struct AfPacket {
    buf: Box<[u8]>,
    len: usize,
}

impl Packet for AfPacket {
    fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl fmt::Debug for AfPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfPacket")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// What a port has counted since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AfPacketStats {
    /// Frames `rx_burst` delivered.
    pub rx_frames: u64,
    /// Frames dropped because they were longer than the receive buffer.
    pub rx_truncated: u64,
    /// Frames the kernel dropped because the socket's receive buffer was full
    /// (`PACKET_STATISTICS`, brought up to date by [`AfPacketPort::stats`]).
    pub rx_kernel_drops: u64,
    /// Frames the kernel took in `tx_burst`.
    pub tx_frames: u64,
    /// Frames handed to `tx_burst` that were not sent (queue full, longer than the MTU, link
    /// down).
    pub tx_dropped: u64,
}

/// A packet socket bound to one interface.
pub struct AfPacketPort {
    fd: OwnedFd,
    iface: String,
    mac: Option<[u8; 6]>,
    driver: String,
    mtu: u32,
    /// Longest frame a receive takes whole.
    frame_cap: usize,
    /// Size of a receive buffer: `frame_cap` plus room to put back a VLAN tag.
    buf_len: usize,
    /// Receive buffers, one per frame of a burst, with the address and control message the
    /// kernel reports for each.
    slots: Vec<Box<[u8]>>,
    addrs: Vec<libc::sockaddr_ll>,
    controls: Vec<ControlBuf>,
    free: Vec<Box<[u8]>>,
    stats: AfPacketStats,
    warned_truncated: bool,
    link_down: bool,
}

impl fmt::Debug for AfPacketPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfPacketPort")
            .field("iface", &self.iface)
            .field("fd", &self.fd.as_raw_fd())
            .field("mtu", &self.mtu)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AfPacketPort {
    /// Opens a packet socket on `iface`, which must exist in the calling thread's network
    /// namespace, be up, and be an Ethernet (or loopback) interface.
    ///
    /// Needs `CAP_NET_RAW`. Errors name the interface and say what to do.
    pub fn open(iface: &str) -> Result<AfPacketPort, NicError> {
        check_ifname(iface).map_err(NicError::Config)?;
        let name = CString::new(iface).map_err(|_| {
            NicError::Config(format!("interface name `{iface}` contains a NUL byte"))
        })?;
        // SAFETY: `name` is a NUL-terminated string alive across the call, which only reads it.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ENODEV | libc::ENXIO) => NicError::Config(format!(
                    "no interface named `{iface}` in this network namespace (see `ip link show`)"
                )),
                _ => NicError::io(format!("looking up interface `{iface}`"), err),
            });
        }
        let ifindex = libc::c_int::try_from(index)
            .map_err(|_| NicError::Config(format!("interface `{iface}` has index {index}")))?;

        // Protocol 0: the socket receives nothing until it is bound to the interface below, so no
        // frame of another interface can slip into its queue in between.
        // SAFETY: socket(2) takes only integers.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(sys_error(
                format!("opening a packet socket for `{iface}`"),
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a descriptor socket(2) just returned; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = fd.as_raw_fd();

        let mut req = ifreq(iface);
        if_ioctl(sock, libc::SIOCGIFFLAGS, &mut req)
            .map_err(|e| NicError::io(format!("reading the flags of `{iface}`"), e))?;
        // SAFETY: SIOCGIFFLAGS filled `ifru_flags`; every bit pattern is a valid c_short.
        let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags });
        if flags & libc::IFF_UP == 0 {
            return Err(NicError::Config(format!(
                "interface `{iface}` is down; bring it up first (`ip link set {iface} up`)"
            )));
        }
        if flags & libc::IFF_RUNNING == 0 {
            tracing::warn!(
                iface,
                "interface has no carrier yet; frames flow once it has one"
            );
        }

        let mut req = ifreq(iface);
        if_ioctl(sock, libc::SIOCGIFHWADDR, &mut req)
            .map_err(|e| NicError::io(format!("reading the MAC address of `{iface}`"), e))?;
        // SAFETY: SIOCGIFHWADDR filled `ifru_hwaddr`, a sockaddr of plain integers.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mac = match hw.sa_family {
            libc::ARPHRD_ETHER => {
                let mut mac = [0u8; 6];
                for (m, b) in mac.iter_mut().zip(hw.sa_data) {
                    *m = b as u8;
                }
                Some(mac)
            }
            libc::ARPHRD_LOOPBACK => None,
            other => {
                return Err(NicError::Config(format!(
                    "interface `{iface}` is not an Ethernet interface (ARPHRD type {other}); \
                     the AF_PACKET backend reads and writes Ethernet frames"
                )));
            }
        };

        let mut req = ifreq(iface);
        if_ioctl(sock, libc::SIOCGIFMTU, &mut req)
            .map_err(|e| NicError::io(format!("reading the MTU of `{iface}`"), e))?;
        // SAFETY: SIOCGIFMTU filled `ifru_mtu`; every bit pattern is a valid c_int.
        let mtu = u32::try_from(unsafe { req.ifr_ifru.ifru_mtu }).unwrap_or(0);
        let frame_cap = (mtu as usize + ETH_HLEN + 2 * VLAN_HLEN).max(MIN_FRAME);
        let driver = driver_name(sock, iface);

        let what = |opt: &str| format!("setting {opt} on the packet socket of `{iface}`");
        if set_opt(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF_BYTES).is_err() {
            // Without CAP_NET_ADMIN; the kernel caps the plain option at net.core.rmem_max.
            set_opt(sock, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF_BYTES)
                .map_err(|e| NicError::io(what("SO_RCVBUF"), e))?;
        }
        // The kernel doubles what it was asked for (for its bookkeeping) and reports that.
        let rcvbuf = get_int_opt(sock, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0) / 2;
        if rcvbuf < RCVBUF_BYTES {
            tracing::warn!(
                iface,
                rcvbuf,
                wanted = RCVBUF_BYTES,
                "small receive buffer: bursts may be dropped; run with CAP_NET_ADMIN or raise \
                 net.core.rmem_max"
            );
        }
        if set_opt(sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &SNDBUF_BYTES).is_err() {
            set_opt(sock, libc::SOL_SOCKET, libc::SO_SNDBUF, &SNDBUF_BYTES)
                .map_err(|e| NicError::io(what("SO_SNDBUF"), e))?;
        }
        if let Err(e) = set_opt(sock, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32) {
            // Linux before 4.20: rx_burst drops outgoing frames by their packet type instead.
            tracing::debug!(iface, error = %e, "no PACKET_IGNORE_OUTGOING");
        }
        set_opt(sock, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1i32)
            .map_err(|e| NicError::io(what("PACKET_AUXDATA"), e))?;
        let promisc = libc::packet_mreq {
            mr_ifindex: ifindex,
            mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        set_opt(
            sock,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &promisc,
        )
        .map_err(|e| sys_error(format!("putting `{iface}` in promiscuous mode"), e))?;
        let wait = libc::timeval {
            tv_sec: 0,
            tv_usec: RX_WAIT_MICROS,
        };
        set_opt(sock, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &wait)
            .map_err(|e| NicError::io(what("SO_RCVTIMEO"), e))?;

        let mut addr = zeroed_sockaddr_ll();
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a live sockaddr_ll of the length passed, which bind(2) only reads.
        let rc = unsafe {
            libc::bind(
                sock,
                (&raw const addr).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(sys_error(
                format!("binding the packet socket to `{iface}`"),
                io::Error::last_os_error(),
            ));
        }

        let buf_len = frame_cap + VLAN_HLEN;
        Ok(AfPacketPort {
            fd,
            iface: iface.to_string(),
            mac,
            driver,
            mtu,
            frame_cap,
            buf_len,
            slots: (0..BURST).map(|_| new_buf(buf_len)).collect(),
            addrs: vec![zeroed_sockaddr_ll(); BURST],
            controls: vec![ControlBuf([0; 64]); BURST],
            free: Vec::with_capacity(FREE_MAX),
            stats: AfPacketStats::default(),
            warned_truncated: false,
            link_down: false,
        })
    }

    /// The interface's MTU when the port was opened.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// What the port has counted so far, with the kernel's receive-queue drops brought up to
    /// date.
    pub fn stats(&mut self) -> AfPacketStats {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        // The kernel resets its counters on every read, so they are added up here.
        if get_opt(
            self.fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st,
        )
        .is_ok()
        {
            self.stats.rx_kernel_drops += u64::from(st.tp_drops);
        }
        self.stats
    }

    /// A buffer for a receive slot or a frame to send: from the free list, or new.
    fn spare(&mut self) -> Box<[u8]> {
        while let Some(buf) = self.free.pop() {
            if buf.len() >= self.buf_len {
                return buf;
            }
        }
        new_buf(self.buf_len)
    }

    fn note_link(&mut self, down: bool) {
        if down && !self.link_down {
            tracing::warn!(iface = %self.iface, "interface went down; waiting for it to come back");
        } else if !down && self.link_down {
            tracing::info!(iface = %self.iface, "interface is up again");
        }
        self.link_down = down;
    }
}

impl Port for AfPacketPort {
    type Packet = AfPacket;

    fn rx_burst(&mut self, out: &mut Vec<AfPacket>, max: usize) -> Result<usize, NicError> {
        let n = max.min(BURST);
        if n == 0 {
            return Ok(0);
        }
        let mut iovs = [libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        }; BURST];
        for (iov, slot) in iovs.iter_mut().zip(self.slots.iter_mut()).take(n) {
            iov.iov_base = slot.as_mut_ptr().cast();
            iov.iov_len = self.frame_cap;
        }
        let mut msgs = zeroed_mmsghdrs();
        for (i, m) in msgs.iter_mut().enumerate().take(n) {
            let h = &mut m.msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            h.msg_iov = &raw mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = (&raw mut self.controls[i]).cast();
            h.msg_controllen = mem::size_of::<ControlBuf>();
        }
        // SAFETY: each of the first `n` headers points to one iovec over a receive buffer of at
        // least `frame_cap` bytes, a sockaddr_ll and a control buffer, all owned by this port or
        // this frame, alive and untouched by anything else until the call returns, with the
        // lengths given; a null timeout is allowed (SO_RCVTIMEO bounds the wait).
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                // The timeout passed with nothing to receive, or a signal came first.
                Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                // Reported once when the link goes down; the socket receives again once it is
                // back up, as a NIC does.
                Some(libc::ENETDOWN) => {
                    self.note_link(true);
                    Ok(0)
                }
                _ => Err(NicError::io(format!("receiving on `{}`", self.iface), err)),
            };
        }
        let got = rc as usize;

        // What to deliver, decided before any buffer moves.
        let mut keep = [None::<usize>; BURST];
        for (i, m) in msgs.iter().enumerate().take(got) {
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.rx_truncated += 1;
                if !self.warned_truncated {
                    self.warned_truncated = true;
                    tracing::warn!(
                        iface = %self.iface,
                        buffer = self.frame_cap,
                        "dropping received frames longer than the receive buffer (GRO/LRO on, or \
                         the MTU raised after the port opened); counted as rx_truncated"
                    );
                }
                continue;
            }
            if self.addrs[i].sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut len = m.msg_len as usize;
            if let Some((tpid, tci)) = stripped_vlan(&m.msg_hdr) {
                let buf = &mut self.slots[i];
                if len >= TAG_AT && len + VLAN_HLEN <= buf.len() {
                    buf.copy_within(TAG_AT..len, TAG_AT + VLAN_HLEN);
                    buf[TAG_AT..TAG_AT + 2].copy_from_slice(&tpid.to_be_bytes());
                    buf[TAG_AT + 2..TAG_AT + 4].copy_from_slice(&tci.to_be_bytes());
                    len += VLAN_HLEN;
                }
            }
            keep[i] = Some(len);
        }
        let mut delivered = 0;
        for (i, len) in keep.iter().enumerate().take(got) {
            if let Some(len) = *len {
                let fresh = self.spare();
                let buf = mem::replace(&mut self.slots[i], fresh);
                out.push(AfPacket { buf, len });
                delivered += 1;
            }
        }
        self.stats.rx_frames += delivered as u64;
        if got > 0 {
            self.note_link(false);
        }
        Ok(delivered)
    }

    fn tx_burst(&mut self, pkts: &mut Vec<AfPacket>) -> Result<usize, NicError> {
        let total = pkts.len();
        let mut sent = 0;
        let mut failure = None;
        let mut at = 0;
        'chunks: while at < total {
            let chunk = (total - at).min(BURST);
            let mut iovs = [libc::iovec {
                iov_base: ptr::null_mut(),
                iov_len: 0,
            }; BURST];
            for (iov, p) in iovs.iter_mut().zip(&pkts[at..at + chunk]) {
                iov.iov_base = p.buf.as_ptr().cast_mut().cast();
                iov.iov_len = p.len;
            }
            let mut msgs = zeroed_mmsghdrs();
            for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()).take(chunk) {
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
            }
            let mut done = 0;
            while done < chunk {
                // SAFETY: the headers from `done` to `chunk` each point to one iovec over a frame
                // in `pkts`, alive and unchanged until the call returns; sendmmsg(2) only reads
                // them (the socket is bound, so no address is needed).
                let rc = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
                        msgs[done..].as_mut_ptr(),
                        (chunk - done) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if rc == 0 {
                    break 'chunks;
                }
                if rc > 0 {
                    // A short count means the next frame failed; the retry reports why.
                    done += rc as usize;
                    sent += rc as usize;
                    continue;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // Longer than the MTU: this frame only.
                    Some(libc::EMSGSIZE) => done += 1,
                    // The queue is full: what is left is dropped, as a full NIC ring drops.
                    Some(libc::EAGAIN | libc::ENOBUFS) => break 'chunks,
                    Some(libc::ENETDOWN) => {
                        self.note_link(true);
                        break 'chunks;
                    }
                    Some(libc::ENXIO | libc::ENODEV) => {
                        failure = Some(NicError::Config(format!(
                            "interface `{}` is gone; the port must be reopened",
                            self.iface
                        )));
                        break 'chunks;
                    }
                    _ => {
                        failure = Some(NicError::io(format!("sending on `{}`", self.iface), err));
                        break 'chunks;
                    }
                }
            }
            at += chunk;
        }
        if sent > 0 {
            self.note_link(false);
        }
        self.stats.tx_frames += sent as u64;
        self.stats.tx_dropped += (total - sent) as u64;
        for p in pkts.drain(..) {
            if self.free.len() < FREE_MAX && p.buf.len() >= self.buf_len {
                self.free.push(p.buf);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    fn alloc(&mut self, data: &[u8]) -> Result<AfPacket, NicError> {
        let mut buf = if data.len() <= self.buf_len {
            self.spare()
        } else {
            // Too long to send on this interface; tx_burst will count it dropped.
            new_buf(data.len())
        };
        buf[..data.len()].copy_from_slice(data);
        Ok(AfPacket {
            buf,
            len: data.len(),
        })
    }

    fn link_down(&self) -> bool {
        self.link_down
    }

    fn info(&self) -> NicInfo {
        NicInfo {
            backend: "af_packet",
            device: self.iface.clone(),
            model: self.driver.clone(),
            mac: self.mac,
        }
    }
}

fn new_buf(len: usize) -> Box<[u8]> {
    vec![0; len].into_boxed_slice()
}

/// An I/O error, with a hint when it is a missing privilege.
fn sys_error(what: String, err: io::Error) -> NicError {
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            NicError::io(format!("{what} (needs root or CAP_NET_RAW)"), err)
        }
        _ => NicError::io(what, err),
    }
}

/// The 802.1Q tag the kernel took off a received frame, as (TPID, TCI), from its
/// `PACKET_AUXDATA` control message.
fn stripped_vlan(hdr: &libc::msghdr) -> Option<(u16, u16)> {
    let want = mem::size_of::<libc::tpacket_auxdata>() as libc::c_uint;
    // SAFETY: `hdr` was filled by recvmmsg(2): `msg_control` points to this port's control
    // buffer and `msg_controllen` says how much of it the kernel wrote; the CMSG_* helpers stay
    // within that length, and the auxdata is read (unaligned) only from a message long enough
    // to hold it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET
                && (*c).cmsg_type == libc::PACKET_AUXDATA
                && (*c).cmsg_len >= libc::CMSG_LEN(want) as usize
            {
                let aux: libc::tpacket_auxdata =
                    ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>());
                // As libpcap reads it: kernels before 3.0 set no VALID bit for a tag of 0.
                if aux.tp_vlan_tci == 0 && aux.tp_status & libc::TP_STATUS_VLAN_VALID == 0 {
                    return None;
                }
                let tpid = if aux.tp_vlan_tpid != 0
                    || aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0
                {
                    aux.tp_vlan_tpid
                } else {
                    ETH_P_8021Q
                };
                return Some((tpid, aux.tp_vlan_tci));
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// The name the interface's driver reports (`veth`, `ixgbe`, …), or empty if unknown.
fn driver_name(sock: RawFd, iface: &str) -> String {
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        ..EthtoolDrvinfo::default()
    };
    let mut req = ifreq(iface);
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO reads the ifreq and writes one ethtool_drvinfo
    // (laid out as `EthtoolDrvinfo`) where `ifru_data` points: to `info`, alive and not otherwise
    // borrowed across the call.
    let rc = unsafe { libc::ioctl(sock, libc::SIOCETHTOOL, &raw mut req) };
    if rc == 0 {
        let end = info
            .driver
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(info.driver.len());
        return String::from_utf8_lossy(&info.driver[..end]).into_owned();
    }
    // No ethtool support: the driver's sysfs link (which shows the namespace sysfs was mounted
    // in, hence only a fallback).
    std::fs::read_link(format!("/sys/class/net/{iface}/device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// An `ifreq` naming `iface` (at most 15 bytes, checked by the caller), the rest zero.
fn ifreq(iface: &str) -> libc::ifreq {
    // SAFETY: ifreq is a name and a union of integers, addresses and a pointer, for all of which
    // all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    req
}

/// One of the `SIOCGIF*` requests, which read and write only the `ifreq` itself.
fn if_ioctl(sock: RawFd, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `request` is a SIOCGIF* query, which reads the name in `req` and writes one union
    // field of it; `req` is exclusively borrowed and alive across the call.
    let rc = unsafe { libc::ioctl(sock, request, ptr::from_mut(req)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_opt<T>(sock: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the length passed, which setsockopt(2) only reads.
    let rc = unsafe {
        libc::setsockopt(
            sock,
            level,
            name,
            ptr::from_ref(value).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a socket option into `value`, whose type must be the one the option fills.
fn get_opt<T: Copy>(
    sock: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<()> {
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to a live, exclusively borrowed T of `len` bytes; getsockopt(2)
    // writes at most `len` bytes there and updates `len`. Callers pass plain-data types (`Copy`
    // integers and C structs), for which any bytes the kernel writes are valid.
    let rc =
        unsafe { libc::getsockopt(sock, level, name, ptr::from_mut(value).cast(), &raw mut len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int_opt(sock: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    get_opt(sock, level, name, &mut v)?;
    Ok(v)
}

fn zeroed_sockaddr_ll() -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain integers and a byte array; all-zero bytes are valid.
    unsafe { mem::zeroed() }
}

fn zeroed_mmsghdrs() -> [libc::mmsghdr; BURST] {
    // SAFETY: mmsghdr is integers and raw pointers, for which all-zero bytes (null) are valid.
    unsafe { mem::zeroed() }
}
