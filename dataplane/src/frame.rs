//! The Nexus frame: the header the data plane reads, and its strict parser.
//!
//! A Nexus frame is a 48-byte header and its payload, carried either directly in an Ethernet II
//! frame (EtherType [`ETHERTYPE_NEXUS`], optionally behind one 802.1Q tag) or as the payload of a
//! UDP datagram to port [`UDP_PORT`] over IPv4 or IPv6. All fields are big-endian:
//!
//! ```text
//!  0      2     3     4          6     7     8                24               40         44         48
//!  +------+-----+-----+----------+-----+-----+----------------+----------------+----------+----------+---------
//!  |magic |ver  |mode | msg type |hops |flags| source node id | dest node id   |stream id |length    | payload
//!  |"NX"  |1    |0..3 | u16      |u8   |0    | 16 bytes       | 16 bytes       |u32       |u32       | length bytes
//!  +------+-----+-----+----------+-----+-----+----------------+----------------+----------+----------+---------
//! ```
//!
//! - `mode`: the stream mode, 0 = RO (reliable ordered), 1 = RU (reliable unordered),
//!   2 = BE (best effort), 3 = PR (priority).
//! - `hops`: hop limit; a node decrements it when it forwards the frame and drops a frame that
//!   arrives with 0.
//! - `flags`: reserved, zero in version 1.
//! - `length`: payload bytes after the header. Bytes after the payload (Ethernet padding of short
//!   frames) are allowed and kept.
//!
//! The parser never panics and never reads past the buffer: every field is bounds-checked and a
//! frame that is truncated or inconsistent is refused with a [`ParseError`] the data plane counts
//! by kind. Frames of other protocols (ARP, other UDP ports, …) are [`ParseError::NotNexus`]: they
//! are not Nexus traffic and are ignored rather than counted as malformed.

use std::fmt;

/// EtherType of a Nexus frame carried directly over Ethernet (IEEE 802 local experimental 1).
pub const ETHERTYPE_NEXUS: u16 = 0x88B5;
/// UDP destination port of a Nexus frame carried over IP.
pub const UDP_PORT: u16 = 7470;
/// `"NX"`.
pub const MAGIC: u16 = 0x4E58;
/// The header version this parser reads.
pub const VERSION: u8 = 1;
/// Length of the Nexus header.
pub const HEADER_LEN: usize = 48;
/// Hop limit a fresh frame starts with.
pub const DEFAULT_HOPS: u8 = 16;

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
const UDP_LEN: usize = 8;
const IPV6_LEN: usize = 40;

// Field offsets inside the Nexus header.
const OFF_MODE: usize = 3;
const OFF_HOPS: usize = 6;
const OFF_DST: usize = 24;

/// A stream mode, as carried in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Mode {
    /// Reliable, ordered.
    Ro = 0,
    /// Reliable, unordered.
    Ru = 1,
    /// Best effort.
    Be = 2,
    /// Priority.
    Pr = 3,
}

impl Mode {
    /// Every mode, in wire order.
    pub const ALL: [Mode; 4] = [Mode::Ro, Mode::Ru, Mode::Be, Mode::Pr];

    /// The mode with wire value `v`, if any.
    pub fn from_wire(v: u8) -> Option<Mode> {
        Mode::ALL.get(v as usize).copied()
    }
}

impl From<nexus_crdt::StreamMode> for Mode {
    fn from(m: nexus_crdt::StreamMode) -> Mode {
        match m {
            nexus_crdt::StreamMode::RO => Mode::Ro,
            nexus_crdt::StreamMode::RU => Mode::Ru,
            nexus_crdt::StreamMode::BE => Mode::Be,
            nexus_crdt::StreamMode::PR => Mode::Pr,
        }
    }
}

/// How the Nexus header was carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// Directly in Ethernet (EtherType 0x88B5).
    Ethernet,
    /// In UDP over IPv4; `udp_csum` is the offset of the UDP checksum in the frame.
    Udp4 {
        /// Offset of the UDP checksum field.
        udp_csum: usize,
    },
    /// In UDP over IPv6; `udp_csum` is the offset of the UDP checksum in the frame.
    Udp6 {
        /// Offset of the UDP checksum field.
        udp_csum: usize,
    },
}

/// The parsed Nexus header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Stream mode.
    pub mode: Mode,
    /// Message type.
    pub msg_type: u16,
    /// Hop limit as received.
    pub hops: u8,
    /// Source node id.
    pub src: [u8; 16],
    /// Destination node id.
    pub dst: [u8; 16],
    /// Flow / stream id.
    pub stream_id: u32,
    /// Payload length.
    pub length: u32,
    /// Offset of the Nexus header in the frame.
    pub offset: usize,
    /// How the header was carried.
    pub encap: Encap,
}

/// Why a frame was refused. Every kind has a stable label for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Not a Nexus frame (another EtherType, IP protocol or UDP port): ignored, not malformed.
    NotNexus,
    /// The frame ends inside a header.
    Truncated,
    /// The Nexus magic is not `"NX"`.
    BadMagic,
    /// A header version this node does not read.
    BadVersion,
    /// A stream mode outside 0..=3.
    BadMode,
    /// Reserved flag bits are set.
    ReservedFlags,
    /// The payload length runs past the end of the frame (or the IP/UDP length).
    BadLength,
    /// An IP header that is inconsistent (version, header length, total length).
    BadIpHeader,
    /// An IPv4 fragment: Nexus frames are never fragmented.
    Fragment,
    /// A UDP length shorter than its header or past the IP payload.
    BadUdpLength,
}

impl ParseError {
    /// Every kind, for pre-registering metrics.
    pub const ALL: [ParseError; 10] = [
        ParseError::NotNexus,
        ParseError::Truncated,
        ParseError::BadMagic,
        ParseError::BadVersion,
        ParseError::BadMode,
        ParseError::ReservedFlags,
        ParseError::BadLength,
        ParseError::BadIpHeader,
        ParseError::Fragment,
        ParseError::BadUdpLength,
    ];

    /// Stable label (`kind` in metrics).
    pub fn label(self) -> &'static str {
        match self {
            ParseError::NotNexus => "not_nexus",
            ParseError::Truncated => "truncated",
            ParseError::BadMagic => "bad_magic",
            ParseError::BadVersion => "bad_version",
            ParseError::BadMode => "bad_mode",
            ParseError::ReservedFlags => "reserved_flags",
            ParseError::BadLength => "bad_length",
            ParseError::BadIpHeader => "bad_ip_header",
            ParseError::Fragment => "fragment",
            ParseError::BadUdpLength => "bad_udp_length",
        }
    }

    /// Index into [`ParseError::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for ParseError {}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Parses the Nexus header of an Ethernet frame.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Header, ParseError> {
    let mut ethertype = be16(frame, 12).ok_or(ParseError::Truncated)?;
    let mut at = ETH_LEN;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, at + 2).ok_or(ParseError::Truncated)?;
        at += VLAN_LEN;
    }
    match ethertype {
        ETHERTYPE_NEXUS => parse_nexus(frame, at, frame.len(), Encap::Ethernet),
        ETHERTYPE_IPV4 => parse_ipv4(frame, at),
        ETHERTYPE_IPV6 => parse_ipv6(frame, at),
        _ => Err(ParseError::NotNexus),
    }
}

fn parse_ipv4(frame: &[u8], at: usize) -> Result<Header, ParseError> {
    let ip = frame.get(at..at + 20).ok_or(ParseError::Truncated)?;
    if ip[0] >> 4 != 4 {
        return Err(ParseError::BadIpHeader);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || at + total > frame.len() {
        return Err(ParseError::BadIpHeader);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(ParseError::NotNexus);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let udp = at + ihl;
    let end = at + total;
    if frag & 0x1fff != 0 {
        // A later fragment carries no UDP header: whose it is cannot be told.
        return Err(ParseError::NotNexus);
    }
    if frag & 0x2000 != 0 {
        // The first fragment of a datagram: malformed if it is Nexus (never fragmented),
        // someone else's otherwise.
        let dport = be16(frame, udp + 2).ok_or(ParseError::Truncated)?;
        return Err(if dport == UDP_PORT {
            ParseError::Fragment
        } else {
            ParseError::NotNexus
        });
    }
    let csum = parse_udp(frame, udp, end)?;
    parse_nexus_udp(frame, udp, Encap::Udp4 { udp_csum: csum })
}

fn parse_ipv6(frame: &[u8], at: usize) -> Result<Header, ParseError> {
    let ip = frame.get(at..at + IPV6_LEN).ok_or(ParseError::Truncated)?;
    if ip[0] >> 4 != 6 {
        return Err(ParseError::BadIpHeader);
    }
    let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let end = at + IPV6_LEN + payload;
    if end > frame.len() {
        return Err(ParseError::BadIpHeader);
    }
    // Extension headers are not followed: a Nexus datagram carries none.
    if ip[6] != IPPROTO_UDP {
        return Err(ParseError::NotNexus);
    }
    let udp = at + IPV6_LEN;
    let csum = parse_udp(frame, udp, end)?;
    parse_nexus_udp(frame, udp, Encap::Udp6 { udp_csum: csum })
}

/// Checks the UDP header at `udp` inside an IP payload ending at `end`; returns the offset of its
/// checksum.
fn parse_udp(frame: &[u8], udp: usize, end: usize) -> Result<usize, ParseError> {
    if udp + UDP_LEN > end {
        return Err(ParseError::Truncated);
    }
    let dport = be16(frame, udp + 2).ok_or(ParseError::Truncated)?;
    if dport != UDP_PORT {
        return Err(ParseError::NotNexus);
    }
    let len = usize::from(be16(frame, udp + 4).ok_or(ParseError::Truncated)?);
    if len < UDP_LEN || udp + len > end {
        return Err(ParseError::BadUdpLength);
    }
    Ok(udp + 6)
}

fn parse_nexus_udp(frame: &[u8], udp: usize, encap: Encap) -> Result<Header, ParseError> {
    let len = usize::from(be16(frame, udp + 4).ok_or(ParseError::Truncated)?);
    parse_nexus(frame, udp + UDP_LEN, udp + len, encap)
}

/// Parses the Nexus header at `at`; its payload must end by `end`.
#[inline(always)]
fn parse_nexus(frame: &[u8], at: usize, end: usize, encap: Encap) -> Result<Header, ParseError> {
    let h: &[u8; HEADER_LEN] = frame
        .get(at..at + HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(ParseError::Truncated)?;
    if at + HEADER_LEN > end {
        return Err(ParseError::Truncated);
    }
    if u16::from_be_bytes([h[0], h[1]]) != MAGIC {
        return Err(ParseError::BadMagic);
    }
    if h[2] != VERSION {
        return Err(ParseError::BadVersion);
    }
    let mode = Mode::from_wire(h[OFF_MODE]).ok_or(ParseError::BadMode)?;
    if h[7] != 0 {
        return Err(ParseError::ReservedFlags);
    }
    let length = u32::from_be_bytes([h[44], h[45], h[46], h[47]]);
    if length as usize > end - at - HEADER_LEN {
        return Err(ParseError::BadLength);
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);
    Ok(Header {
        mode,
        msg_type: u16::from_be_bytes([h[4], h[5]]),
        hops: h[OFF_HOPS],
        src,
        dst,
        stream_id: u32::from_be_bytes([h[40], h[41], h[42], h[43]]),
        length,
        offset: at,
        encap,
    })
}

/// Updates a ones'-complement checksum for a 16-bit word changing from `old` to `new`
/// (RFC 1624, eqn. 3).
fn csum_update(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Rewrites bytes of the Nexus header in place and keeps a UDP checksum valid.
///
/// `rel` is the offset inside the Nexus header and must be even.
fn rewrite(frame: &mut [u8], h: &Header, rel: usize, new: &[u8]) {
    debug_assert!(rel.is_multiple_of(2) && new.len().is_multiple_of(2));
    let at = h.offset + rel;
    let csum_at = match h.encap {
        Encap::Ethernet => None,
        Encap::Udp4 { udp_csum } | Encap::Udp6 { udp_csum } => Some(udp_csum),
    };
    if let Some(c) = csum_at {
        let mut csum = u16::from_be_bytes([frame[c], frame[c + 1]]);
        // A zero UDP checksum over IPv4 means "none": leave it so.
        let present = csum != 0 || matches!(h.encap, Encap::Udp6 { .. });
        if present {
            // The header starts 8 bytes after the UDP header, so its 16-bit words line up with
            // the checksum's.
            for (i, pair) in new.chunks_exact(2).enumerate() {
                let old = u16::from_be_bytes([frame[at + 2 * i], frame[at + 2 * i + 1]]);
                csum = csum_update(csum, old, u16::from_be_bytes([pair[0], pair[1]]));
            }
            if csum == 0 {
                csum = 0xffff;
            }
            frame[c..c + 2].copy_from_slice(&csum.to_be_bytes());
        }
    }
    frame[at..at + new.len()].copy_from_slice(new);
}

/// Sets the destination node id (a redirect), keeping the UDP checksum valid.
pub fn set_dst(frame: &mut [u8], h: &Header, dst: &[u8; 16]) {
    rewrite(frame, h, OFF_DST, dst);
}

/// Writes the hop limit (the 16-bit word it shares with the flags), keeping the UDP checksum valid.
pub fn set_hops(frame: &mut [u8], h: &Header, hops: u8) {
    rewrite(frame, h, OFF_HOPS, &[hops, 0]);
}

/// The fields of a frame to build (tests, benchmarks and traffic generators).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    /// Stream mode.
    pub mode: Mode,
    /// Message type.
    pub msg_type: u16,
    /// Hop limit.
    pub hops: u8,
    /// Source node id.
    pub src: [u8; 16],
    /// Destination node id.
    pub dst: [u8; 16],
    /// Stream id.
    pub stream_id: u32,
}

impl FrameSpec {
    /// A best-effort frame from `src` to `dst` with message type `msg_type`.
    pub fn new(src: [u8; 16], dst: [u8; 16], msg_type: u16) -> FrameSpec {
        FrameSpec {
            mode: Mode::Be,
            msg_type,
            hops: DEFAULT_HOPS,
            src,
            dst,
            stream_id: 0,
        }
    }

    fn header(&self, payload_len: usize) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        h[2] = VERSION;
        h[3] = self.mode as u8;
        h[4..6].copy_from_slice(&self.msg_type.to_be_bytes());
        h[6] = self.hops;
        h[8..24].copy_from_slice(&self.src);
        h[24..40].copy_from_slice(&self.dst);
        h[40..44].copy_from_slice(&self.stream_id.to_be_bytes());
        h[44..48].copy_from_slice(&(payload_len as u32).to_be_bytes());
        h
    }

    /// An Ethernet frame (EtherType 0x88B5) of exactly `frame_len` bytes (at least 62): the
    /// payload fills the rest and is a repeating pattern of `fill`.
    pub fn ethernet(
        &self,
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        frame_len: usize,
        fill: u8,
    ) -> Vec<u8> {
        let frame_len = frame_len.max(ETH_LEN + HEADER_LEN);
        let payload = frame_len - ETH_LEN - HEADER_LEN;
        let mut f = Vec::with_capacity(frame_len);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_NEXUS.to_be_bytes());
        f.extend_from_slice(&self.header(payload));
        f.extend((0..payload).map(|i| fill.wrapping_add(i as u8)));
        f
    }

    /// An Ethernet + IPv4 + UDP frame with `payload` bytes of payload and a valid UDP checksum.
    pub fn udp4(&self, src_ip: [u8; 4], dst_ip: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let udp_len = UDP_LEN + HEADER_LEN + payload.len();
        let total = 20 + udp_len;
        let mut f = Vec::with_capacity(ETH_LEN + total);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = IPPROTO_UDP;
        ip[12..16].copy_from_slice(&src_ip);
        ip[16..20].copy_from_slice(&dst_ip);
        let ipsum = !fold(sum_words(&ip, 0));
        ip[10..12].copy_from_slice(&ipsum.to_be_bytes());
        f.extend_from_slice(&ip);
        let udp_at = f.len();
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&UDP_PORT.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.header(payload.len()));
        f.extend_from_slice(payload);
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&src_ip);
        pseudo.extend_from_slice(&dst_ip);
        pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
        pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
        let csum = udp_checksum(&pseudo, &f[udp_at..]);
        f[udp_at + 6..udp_at + 8].copy_from_slice(&csum.to_be_bytes());
        f
    }
}

fn sum_words(b: &[u8], mut sum: u32) -> u32 {
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The UDP checksum of `udp` (header with a zero checksum field, and payload) under `pseudo`.
pub fn udp_checksum(pseudo: &[u8], udp: &[u8]) -> u16 {
    let mut copy = udp.to_vec();
    if copy.len() >= 8 {
        copy[6] = 0;
        copy[7] = 0;
    }
    let c = !fold(sum_words(&copy, sum_words(pseudo, 0)));
    if c == 0 { 0xffff } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];

    fn eth(spec: &FrameSpec, len: usize) -> Vec<u8> {
        spec.ethernet([0xff; 6], [0x02, 0, 0, 0, 0, 1], len, 7)
    }

    #[test]
    fn round_trips_an_ethernet_frame() {
        let mut spec = FrameSpec::new(A, B, 42);
        spec.mode = Mode::Pr;
        spec.stream_id = 0xdead_beef;
        let f = eth(&spec, 64);
        assert_eq!(f.len(), 64);
        let h = parse(&f).unwrap();
        assert_eq!((h.mode, h.msg_type, h.src, h.dst), (Mode::Pr, 42, A, B));
        assert_eq!((h.stream_id, h.length, h.offset), (0xdead_beef, 2, 14));
        assert_eq!(h.encap, Encap::Ethernet);
    }

    #[test]
    fn reads_a_vlan_tagged_frame() {
        let f = eth(&FrameSpec::new(A, B, 1), 100);
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        tagged.extend_from_slice(&f[12..]);
        let h = parse(&tagged).unwrap();
        assert_eq!((h.offset, h.msg_type), (18, 1));
    }

    #[test]
    fn every_truncation_is_refused_without_panicking() {
        let spec = FrameSpec::new(A, B, 9);
        for full in [
            eth(&spec, 200),
            spec.udp4([10, 0, 0, 1], [10, 0, 0, 2], &[5; 100]),
        ] {
            parse(&full).unwrap();
            for cut in 0..full.len() {
                let r = parse(&full[..cut]);
                assert!(r.is_err(), "a frame cut at {cut} of {} parsed", full.len());
                assert_ne!(r, Err(ParseError::NotNexus), "cut at {cut}");
            }
        }
    }

    #[test]
    fn malformed_fields_are_refused_by_kind() {
        let good = eth(&FrameSpec::new(A, B, 9), 80);
        let cases: [(usize, u8, ParseError); 5] = [
            (14, 0x00, ParseError::BadMagic),
            (16, 2, ParseError::BadVersion),
            (17, 4, ParseError::BadMode),
            (21, 1, ParseError::ReservedFlags),
            (58, 0xff, ParseError::BadLength),
        ];
        for (at, v, want) in cases {
            let mut f = good.clone();
            f[at] = v;
            assert_eq!(parse(&f), Err(want), "byte {at} = {v}");
        }
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp), Err(ParseError::NotNexus));
    }

    #[test]
    fn udp_frames_parse_and_ip_errors_are_named() {
        let spec = FrameSpec::new(A, B, 3);
        let f = spec.udp4([10, 0, 0, 1], [10, 0, 0, 2], b"hello");
        let h = parse(&f).unwrap();
        assert_eq!((h.length, h.offset), (5, 14 + 20 + 8));
        let mut frag = f.clone();
        frag[14 + 6] = 0x20; // more fragments
        assert_eq!(parse(&frag), Err(ParseError::Fragment));
        let mut other = f.clone();
        other[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(parse(&other), Err(ParseError::NotNexus));
        let mut short_udp = f.clone();
        short_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(parse(&short_udp), Err(ParseError::BadUdpLength));
        let mut bad_ihl = f.clone();
        bad_ihl[14] = 0x44;
        assert_eq!(parse(&bad_ihl), Err(ParseError::BadIpHeader));
    }

    #[test]
    fn rewrites_keep_the_udp_checksum_valid() {
        let spec = FrameSpec::new(A, B, 3);
        let mut f = spec.udp4([10, 0, 0, 1], [10, 0, 0, 2], b"payload!");
        let h = parse(&f).unwrap();
        set_dst(&mut f, &h, &[9; 16]);
        set_hops(&mut f, &h, 3);
        let h2 = parse(&f).unwrap();
        assert_eq!((h2.dst, h2.hops), ([9; 16], 3));
        let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 17];
        let udp = &f[34..];
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        let stored = u16::from_be_bytes([udp[6], udp[7]]);
        assert_eq!(stored, udp_checksum(&pseudo, udp));
    }
}
