//! The AF_PACKET backend on real packet sockets: veth pairs between network namespaces this test
//! creates and deletes.
//!
//! ```text
//!   netns nxdp<pid>-<n>            netns nxdp<pid>-<n+1>
//!   nx0 (port `a`)  ◄── veth ──►  nx1 (port `b`)
//! ```
//!
//! Interface names are local to their namespace (the veth ends are created directly inside), so
//! only the namespace names carry the pid and a counter. The root namespace is left alone. A port
//! is opened from a thread that entered the namespace (`setns(2)` moves only the calling thread,
//! and a socket stays in the namespace it was created in), then used from the test thread.
//! Dropping a [`Netns`] deletes it, which destroys the veth with it, also when a test panics;
//! namespaces left by a test process that died without unwinding are deleted by the next run.
//!
//! Needs root (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`, `CAP_NET_RAW`) and `ip` from iproute2: without
//! them the tests fail and say so, they never skip. Only L2 frames cross; no IP addresses are
//! configured, and frames that are not this test's (IPv6 neighbour discovery on a fresh link)
//! are ignored by message type.
#![cfg(target_os = "linux")]
// setns(2) and geteuid(2) have no std wrapper.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use nexus_dataplane::engine::Engine;
use nexus_dataplane::frame::{self, FrameSpec};
use nexus_dataplane::nic::af_packet::{AfPacket, AfPacketPort};
use nexus_dataplane::nic::{BURST, NicError, Packet, Port};

/// Prefix of every namespace this test makes: `nxdp<pid>-<n>`.
const PREFIX: &str = "nxdp";
static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// Message type of the frames a test checks.
const TEST_MSG: u16 = 0x7E57;
/// Message type of the frames that wait for a link to carry traffic.
const PROBE_MSG: u16 = 0x0BE0;

/// How long a fresh veth link may take to carry frames.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails (never skips) when the tests cannot run here.
fn preflight() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the AF_PACKET tests need root (network namespaces, veth pairs, packet sockets); run them \
         as root, e.g. `sudo -E cargo test -p nexus-dataplane --test af_packet`"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.as_ref().is_ok_and(|o| o.status.success()),
        "the AF_PACKET tests need `ip` from iproute2 on PATH (Debian: `apt-get install \
         iproute2`): {ip:?}"
    );
}

/// Runs `ip` with `args`, failing the test with its output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Deletes namespaces left by test processes that are gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `name` or `name (id: 3)`.
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A network namespace this test made. Dropping it deletes it and the interfaces inside.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static SWEEP: Once = Once::new();
        preflight();
        SWEEP.call_once(sweep_stale);
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{seq}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    /// Runs `ip -n <this namespace> args…`.
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on a thread that entered this namespace (the test thread stays where it is).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.name);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Opens a port on `iface` inside this namespace.
    fn open(&self, iface: &str) -> Result<AfPacketPort, NicError> {
        self.run(|| AfPacketPort::open(iface))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

/// Moves the calling thread into the network namespace `name`.
fn enter(name: &str) {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns(2) takes a descriptor we own (open across the call) and a flag; it changes
    // only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "entering network namespace {name}: {}",
        io::Error::last_os_error()
    );
}

/// Two namespaces joined by a veth pair: `nx0` in `a`, `nx1` in `b`, both up.
struct Wire {
    a: Netns,
    b: Netns,
}

impl Wire {
    fn new() -> Wire {
        let (a, b) = (Netns::new(), Netns::new());
        ip(&[
            "link", "add", "name", "nx0", "netns", &a.name, "type", "veth", "peer", "name", "nx1",
            "netns", &b.name,
        ]);
        a.ip(&["link", "set", "nx0", "up"]);
        b.ip(&["link", "set", "nx1", "up"]);
        Wire { a, b }
    }

    /// Ports on both ends, once the link carries frames both ways.
    fn ports(&self) -> (AfPacketPort, AfPacketPort) {
        let mut a = self.a.open("nx0").expect("opening nx0");
        let mut b = self.b.open("nx1").expect("opening nx1");
        wait_for_link(&mut a, &mut b);
        wait_for_link(&mut b, &mut a);
        (a, b)
    }
}

fn mac(port: &AfPacketPort) -> [u8; 6] {
    port.info().mac.expect("a veth has a MAC address")
}

/// A Nexus Ethernet frame of `len` bytes from `from` to `to`, numbered `seq`.
fn nexus_frame(from: [u8; 6], to: [u8; 6], msg_type: u16, seq: u32, len: usize) -> Vec<u8> {
    let mut spec = FrameSpec::new([1; 16], [2; 16], msg_type);
    spec.stream_id = seq;
    spec.ethernet(to, from, len, seq as u8)
}

/// The message type and stream id of a Nexus frame; `None` for other traffic.
fn nexus_ids(data: &[u8]) -> Option<(u16, u32)> {
    frame::parse(data).ok().map(|h| (h.msg_type, h.stream_id))
}

/// Sends probes from `tx` until `rx` hears one: a fresh veth drops frames until the kernel has
/// activated its queue, shortly after the link comes up.
fn wait_for_link(tx: &mut AfPacketPort, rx: &mut AfPacketPort) {
    let deadline = Instant::now() + LINK_UP_TIMEOUT;
    let probe = nexus_frame(mac(tx), mac(rx), PROBE_MSG, 0, 64);
    loop {
        let mut burst = vec![tx.alloc(&probe).unwrap()];
        tx.tx_burst(&mut burst).expect("sending a probe");
        let mut got = Vec::new();
        rx.rx_burst(&mut got, BURST).expect("receiving a probe");
        if got
            .iter()
            .any(|p| nexus_ids(p.data()).is_some_and(|(t, _)| t == PROBE_MSG))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the veth link {} → {} carried no frame within {LINK_UP_TIMEOUT:?}",
            tx.info().device,
            rx.info().device
        );
    }
}

/// This test's frames that `port` receives until it has `want` of them or `wait` has passed.
fn receive(port: &mut AfPacketPort, want: usize, wait: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut frames = Vec::new();
    let mut burst: Vec<AfPacket> = Vec::new();
    while frames.len() < want && Instant::now() < deadline {
        port.rx_burst(&mut burst, BURST).expect("receiving");
        for p in burst.drain(..) {
            if nexus_ids(p.data()).is_some_and(|(t, _)| t == TEST_MSG) {
                frames.push(p.data().to_vec());
            }
        }
    }
    frames
}

/// Where a frame differs from the expected one, for a readable failure.
fn describe(got: &[Vec<u8>], want: &[Vec<u8>]) -> String {
    let lens = |fs: &[Vec<u8>]| fs.iter().map(Vec::len).collect::<Vec<_>>();
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .map_or(String::new(), |i| {
            let at = got[i].iter().zip(&want[i]).position(|(g, w)| g != w);
            format!("; frame {i} differs first at byte {at:?}")
        });
    format!(
        "got {} frames {:?}, sent {} frames {:?}{first_diff}",
        got.len(),
        lens(got),
        want.len(),
        lens(want)
    )
}

#[test]
fn frames_cross_byte_identical_in_order_and_the_sender_does_not_hear_itself() {
    let wire = Wire::new();
    let (mut a, mut b) = wire.ports();

    let info = a.info();
    assert_eq!(info.backend, "af_packet");
    assert_eq!(info.device, "nx0");
    assert_eq!(info.model, "veth");
    assert!(info.mac.is_some_and(|m| m != [0; 6]), "{info:?}");
    assert_eq!(a.mtu(), 1500);

    let (ma, mb) = (mac(&a), mac(&b));
    let mut tagged = nexus_frame(ma, mb, TEST_MSG, 4, 1514);
    // VLAN 100, priority 5: the kernel strips the tag before the socket sees the frame, and the
    // port must put it back.
    tagged.splice(12..12, [0x81, 0x00, 0xA0, 0x64]);
    let frames = vec![
        nexus_frame(ma, mb, TEST_MSG, 1, 64),
        nexus_frame(ma, mb, TEST_MSG, 2, 1500),
        // Full size: a 1500-byte MTU and the Ethernet header.
        nexus_frame(ma, mb, TEST_MSG, 3, 1514),
        tagged,
        nexus_frame(ma, mb, TEST_MSG, 5, 64),
        // Not for `b`'s MAC: delivered all the same (promiscuous).
        nexus_frame(ma, [0x02, 0, 0, 0, 0, 0x99], TEST_MSG, 6, 200),
    ];
    // A second port on the sender's interface, as a node with the same ingress and egress
    // interface has: it must not receive what the first one sends (or it would forward it again).
    let mut a2 = wire.a.open("nx0").expect("opening nx0 again");
    let mut burst: Vec<AfPacket> = frames.iter().map(|f| a.alloc(f).unwrap()).collect();
    assert_eq!(a.tx_burst(&mut burst).unwrap(), frames.len());
    assert!(burst.is_empty(), "tx_burst drains what it is given");

    let got = receive(&mut b, frames.len(), Duration::from_secs(5));
    assert!(got == frames, "{}", describe(&got, &frames));

    // Outgoing frames are not looped back, to the sending port or to another on its interface.
    for (port, who) in [(&mut a, "the sender"), (&mut a2, "another port on nx0")] {
        let echo = receive(port, 1, Duration::from_millis(300));
        assert!(
            echo.is_empty(),
            "{who} received {} outgoing frames",
            echo.len()
        );
    }

    // And the other way.
    let back = vec![nexus_frame(mb, ma, TEST_MSG, 7, 333)];
    let mut burst: Vec<AfPacket> = back.iter().map(|f| b.alloc(f).unwrap()).collect();
    assert_eq!(b.tx_burst(&mut burst).unwrap(), 1);
    let got = receive(&mut a, 1, Duration::from_secs(5));
    assert!(got == back, "{}", describe(&got, &back));

    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.tx_dropped + sb.tx_dropped, 0, "{sa:?} {sb:?}");
    assert_eq!(sa.rx_truncated + sb.rx_truncated, 0, "{sa:?} {sb:?}");
}

#[test]
fn a_burst_of_ten_thousand_frames_arrives_while_the_receiver_drains() {
    const N: usize = 10_000;
    let wire = Wire::new();
    let (mut a, mut b) = wire.ports();
    let (ma, mb) = (mac(&a), mac(&b));
    // Mostly small frames, every fourth one full size.
    let len = |i: usize| if i % 4 == 3 { 1514 } else { 64 };
    let bytes: usize = (0..N).map(len).sum();

    let sending_done = AtomicBool::new(false);
    let start = Instant::now();
    let (arrived, duplicates, reordered, refusals, rx_stats) = std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut seen = vec![false; N];
            let (mut arrived, mut duplicates, mut reordered) = (0usize, 0usize, 0usize);
            let mut last = None;
            let mut idle = 0;
            let mut burst = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while arrived < N && Instant::now() < deadline {
                let n = b.rx_burst(&mut burst, BURST).expect("receiving");
                // Done when the sender is and nothing has come for half a second.
                if n == 0 && sending_done.load(Ordering::Acquire) {
                    idle += 1;
                    if idle >= 5 {
                        break;
                    }
                } else {
                    idle = 0;
                }
                for p in burst.drain(..) {
                    let Some((TEST_MSG, seq)) = nexus_ids(p.data()) else {
                        continue;
                    };
                    let seq = seq as usize;
                    assert_eq!(p.data().len(), len(seq), "frame {seq}");
                    if std::mem::replace(&mut seen[seq], true) {
                        duplicates += 1;
                        continue;
                    }
                    arrived += 1;
                    if last.is_some_and(|l| seq < l) {
                        reordered += 1;
                    }
                    last = Some(seq);
                }
            }
            (arrived, duplicates, reordered, b.stats())
        });

        // The port takes a burst's frames in order and stops at a full queue; what it refused
        // is offered again.
        let mut next = 0;
        let mut refusals = 0usize;
        while next < N {
            let end = (next + BURST).min(N);
            let mut burst: Vec<AfPacket> = (next..end)
                .map(|i| {
                    a.alloc(&nexus_frame(ma, mb, TEST_MSG, i as u32, len(i)))
                        .unwrap()
                })
                .collect();
            let sent = a.tx_burst(&mut burst).expect("sending");
            if sent < end - next {
                refusals += 1;
                assert!(refusals < 1_000_000, "the sender's queue never drained");
                std::thread::yield_now();
            }
            next += sent;
        }
        sending_done.store(true, Ordering::Release);
        let (arrived, duplicates, reordered, rx_stats) = receiver.join().unwrap();
        (arrived, duplicates, reordered, refusals, rx_stats)
    });
    let elapsed = start.elapsed();
    let tx_stats = a.stats();
    eprintln!(
        "{arrived}/{N} frames arrived ({duplicates} duplicates, {reordered} out of order) in \
         {elapsed:?} ({:.0} frames/s, {:.0} Mbit/s); {refusals} partial sends; \
         sender {tx_stats:?}; receiver {rx_stats:?}",
        N as f64 / elapsed.as_secs_f64(),
        (bytes * 8) as f64 / elapsed.as_secs_f64() / 1e6,
    );
    assert_eq!(duplicates, 0);
    assert!(
        arrived * 100 >= N * 99,
        "only {arrived} of {N} frames arrived; receiver {rx_stats:?}"
    );
}

#[test]
fn a_missing_interface_is_named_in_the_error() {
    let ns = Netns::new();
    let err = ns.open("nxmissing0").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, NicError::Config(_)), "{err:?}");
    assert!(msg.contains("no interface named `nxmissing0`"), "{msg}");

    for bad in ["", "a/b", "averyveryverylongname"] {
        let err = ns.open(bad).unwrap_err();
        assert!(matches!(err, NicError::Config(_)), "{bad}: {err:?}");
        assert!(err.to_string().contains("interface name"), "{bad}: {err}");
    }
}

#[test]
fn an_interface_that_is_down_is_refused_with_what_to_do() {
    let ns = Netns::new();
    ns.ip(&[
        "link", "add", "name", "nx0", "type", "veth", "peer", "name", "nx1",
    ]);
    let err = ns.open("nx0").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, NicError::Config(_)), "{err:?}");
    assert!(msg.contains("interface `nx0` is down"), "{msg}");
    assert!(msg.contains("ip link set nx0 up"), "{msg}");

    // Up (its peer still down, so without carrier): it opens.
    ns.ip(&["link", "set", "nx0", "up"]);
    ns.open("nx0")
        .expect("an interface that is up opens, carrier or not");
}

#[test]
fn frames_longer_than_the_receive_buffer_are_dropped_and_counted_never_cut() {
    let wire = Wire::new();
    let (mut a, mut b) = wire.ports();
    // Raised after `b` opened: its buffers still fit a 1500-byte MTU (2048 bytes).
    wire.a.ip(&["link", "set", "nx0", "mtu", "9000"]);
    wire.b.ip(&["link", "set", "nx1", "mtu", "9000"]);
    let (ma, mb) = (mac(&a), mac(&b));
    let frames = [
        nexus_frame(ma, mb, TEST_MSG, 1, 4000),
        nexus_frame(ma, mb, TEST_MSG, 2, 100),
    ];
    let mut burst: Vec<AfPacket> = frames.iter().map(|f| a.alloc(f).unwrap()).collect();
    assert_eq!(a.tx_burst(&mut burst).unwrap(), 2);

    let got = receive(&mut b, 2, Duration::from_secs(1));
    assert!(got == frames[1..], "{}", describe(&got, &frames[1..]));
    assert_eq!(b.stats().rx_truncated, 1);

    // A frame longer than the MTU is not sent, and the port says so by its count.
    let giant = nexus_frame(ma, mb, TEST_MSG, 3, 9100);
    let small = nexus_frame(ma, mb, TEST_MSG, 4, 64);
    let mut burst = vec![a.alloc(&giant).unwrap(), a.alloc(&small).unwrap()];
    assert_eq!(a.tx_burst(&mut burst).unwrap(), 1);
    assert_eq!(a.stats().tx_dropped, 1);
    let got = receive(&mut b, 1, Duration::from_secs(5));
    assert!(got == [small.clone()], "{}", describe(&got, &[small]));
}

/// The engine on one end of a veth, the test on the other: what the test sends goes through
/// the engine and back out of the same interface.
struct Veth {
    engine: Engine<AfPacketPort>,
    wire: AfPacketPort,
    _namespaces: Wire,
}

impl common::Rig for Veth {
    type P = AfPacketPort;

    fn engine(&mut self) -> &mut Engine<AfPacketPort> {
        &mut self.engine
    }

    fn send(&mut self, frames: &[Vec<u8>]) {
        let mut burst: Vec<AfPacket> = frames.iter().map(|f| self.wire.alloc(f).unwrap()).collect();
        let want = burst.len();
        assert_eq!(
            self.wire.tx_burst(&mut burst).expect("send"),
            want,
            "the veth refused frames"
        );
    }

    fn receive(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut burst: Vec<AfPacket> = Vec::new();
        loop {
            burst.clear();
            // The engine already forwarded what it will: a short wait is enough.
            if self.wire.rx_burst(&mut burst, BURST).expect("receive") == 0 {
                return out;
            }
            out.extend(
                burst
                    .iter()
                    .filter(|p| frame::parse(p.data()).is_ok_and(|h| h.src == common::SRC))
                    .map(|p| p.data().to_vec()),
            );
        }
    }
}

#[test]
fn the_engine_on_a_veth_passes_allowed_frames_intact_never_denied_ones_and_holds_limits() {
    let wire = Wire::new();
    let (a, b) = wire.ports();
    let mut rig = Veth {
        engine: common::engine(b, None),
        wire: a,
        _namespaces: wire,
    };
    common::allowed_pass_denied_never_and_limits_hold(&mut rig, 1500);
}
