//! The DPDK backend against DPDK's virtual devices: `net_ring` (loops frames back) and
//! `net_null` (takes everything; receives 64-byte frames of no particular content).
//!
//! DPDK allows one EAL per process and the tests of a binary run on threads of one process, so
//! every test shares one EAL ([`eal`]) and takes [`PORTS`] while it uses ports (a port is opened
//! once at a time, and the pool-leak checks need the pool to themselves).

#![cfg(feature = "dpdk")]

use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use nexus_dataplane::nic::dpdk::{self, DpdkPacket, DpdkPort, Eal, POOL_MBUFS};
use nexus_dataplane::nic::{BURST, NicError, Packet, Port};

static ARGS: OnceLock<Vec<String>> = OnceLock::new();
static PORTS: Mutex<()> = Mutex::new(());

fn args() -> &'static [String] {
    ARGS.get_or_init(|| {
        format!(
            "-l 0 --no-huge -m 64 --no-pci --no-shconf --no-telemetry \
             --file-prefix=nexus-test-{} --vdev=net_ring0 --vdev=net_null0 --vdev=net_ring1",
            std::process::id()
        )
        .split_whitespace()
        .map(str::to_string)
        .collect()
    })
}

fn eal() -> &'static Eal {
    Eal::init(args()).expect("EAL starts with virtual devices and no hugepages")
}

fn ports_lock() -> MutexGuard<'static, ()> {
    PORTS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn port_id(eal: &Eal, name: &str) -> u16 {
    eal.ports()
        .into_iter()
        .find(|(_, n)| n == name)
        .unwrap_or_else(|| panic!("EAL has no {name}: {:?}", eal.ports()))
        .0
}

/// A frame of `len` bytes whose contents differ by `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Polls until `n` frames arrived (a bounded number of polls: rings deliver at once).
fn receive(port: &mut DpdkPort, n: usize) -> Vec<DpdkPacket> {
    let mut got = Vec::new();
    for _ in 0..10_000 {
        if got.len() >= n {
            break;
        }
        port.rx_burst(&mut got, BURST).unwrap();
    }
    got
}

/// Every mbuf is back in the pool: nothing leaked, nothing freed twice (that would show as more).
///
/// Counted by the pool, not by allocating: mbufs freed on the thread that initialised EAL (lcore
/// 0, whichever test came first) stay in that lcore's cache, which other threads cannot draw on.
fn assert_pool_full(eal: &Eal) {
    assert_eq!(
        eal.free_buffers(),
        POOL_MBUFS as usize,
        "mbufs leaked or freed twice"
    );
}

/// Allocating past the pool's end fails with `NoBuffer`, and every allocated frame is counted.
fn assert_pool_runs_dry(eal: &Eal, port: &mut DpdkPort) {
    let mut held = Vec::new();
    let err = loop {
        match port.alloc(&[0; 64]) {
            Ok(p) => held.push(p),
            Err(e) => break e,
        }
        assert!(
            held.len() <= POOL_MBUFS as usize,
            "the pool hands out more mbufs than it has"
        );
    };
    assert!(matches!(err, NicError::NoBuffer), "{err}");
    assert_eq!(eal.free_buffers() + held.len(), POOL_MBUFS as usize);
    drop(held);
    assert_pool_full(eal);
}

#[test]
fn ring_port_loops_a_burst_back_byte_identical_and_in_order() {
    let eal = eal();
    let _ports = ports_lock();
    let id = port_id(eal, "net_ring0");
    let mut port = DpdkPort::open(eal, id).unwrap();
    let info = port.info();
    assert_eq!(info.backend, "dpdk");
    assert_eq!(info.device, format!("net_ring0 (port {id})"));
    assert_eq!(info.model, "net_ring");
    println!("net_ring0: {info:?}");

    let mut nothing = Vec::new();
    assert_eq!(
        port.rx_burst(&mut nothing, BURST).unwrap(),
        0,
        "an idle ring has nothing"
    );

    // More than one burst, of minimum and full-size frames, each frame distinct.
    let frames: Vec<Vec<u8>> = (0..3 * BURST as u8 + 5)
        .map(|i| frame(if i % 3 == 0 { 1500 } else { 64 }, i))
        .collect();
    let mut burst: Vec<DpdkPacket> = frames.iter().map(|f| port.alloc(f).unwrap()).collect();
    assert_eq!(port.tx_burst(&mut burst).unwrap(), frames.len());
    assert!(burst.is_empty(), "tx_burst drains its input");

    let mut got = receive(&mut port, frames.len());
    assert_eq!(got.len(), frames.len());
    for (i, (pkt, sent)) in got.iter().zip(&frames).enumerate() {
        assert!(pkt.data() == sent.as_slice(), "frame {i} came back changed");
    }

    // A header rewrite in place survives the next trip.
    for pkt in &mut got {
        pkt.data_mut()[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    }
    let n = got.len();
    assert_eq!(port.tx_burst(&mut got).unwrap(), n);
    let back = receive(&mut port, n);
    assert_eq!(back.len(), n);
    for (pkt, sent) in back.iter().zip(&frames) {
        assert_eq!(pkt.data()[..6], [0x02, 0, 0, 0, 0, 0x01]);
        assert!(pkt.data()[6..] == sent[6..]);
    }
    drop(back);
    assert_pool_full(eal);
    assert_pool_runs_dry(eal, &mut port);
}

#[test]
fn ring_port_frees_what_a_full_ring_does_not_take() {
    let eal = eal();
    let _ports = ports_lock();
    let mut port = DpdkPort::open(eal, port_id(eal, "net_ring0")).unwrap();
    // net_ring's ring holds 1023 frames: the rest of 1500 are refused, freed and not counted.
    let mut burst: Vec<DpdkPacket> = (0..1500)
        .map(|_| port.alloc(&frame(64, 7)).unwrap())
        .collect();
    let sent = port.tx_burst(&mut burst).unwrap();
    assert!(sent < 1500, "the ring took {sent}");
    assert_eq!(receive(&mut port, sent).len(), sent);
    assert_pool_full(eal);
}

#[test]
fn null_port_takes_every_frame_and_receives_without_crashing() {
    let eal = eal();
    let _ports = ports_lock();
    let id = port_id(eal, "net_null0");
    let mut port = DpdkPort::open(eal, id).unwrap();
    assert_eq!(port.info().model, "net_null");

    let (mut offered, mut sent) = (0, 0);
    let mut burst = Vec::with_capacity(1024);
    for round in 0..10u8 {
        for i in 0..1024usize {
            burst.push(
                port.alloc(&frame(if i % 2 == 0 { 64 } else { 1500 }, round))
                    .unwrap(),
            );
        }
        offered += burst.len();
        sent += port.tx_burst(&mut burst).unwrap();
    }
    assert_eq!(offered, 10_240);
    assert_eq!(sent, offered, "net_null takes every frame");

    let mut got = Vec::new();
    for _ in 0..100 {
        let n = port.rx_burst(&mut got, BURST).unwrap();
        assert_eq!(n, BURST, "net_null always has a full burst");
        assert!(got.iter().all(|p| p.data().len() == 64));
        got.clear();
    }
    assert_eq!(
        port.rx_burst(&mut got, 3).unwrap(),
        3,
        "rx_burst stops at max"
    );
    drop(got);
    assert_pool_full(eal);
}

#[test]
fn opening_a_missing_or_open_port_says_what_to_do() {
    let eal = eal();
    let _ports = ports_lock();
    let err = DpdkPort::open(eal, 77).unwrap_err().to_string();
    println!("missing port: {err}");
    assert!(err.contains("no DPDK port 77"), "{err}");
    assert!(err.contains("EAL found 3 port(s)"), "{err}");
    assert!(
        err.contains("net_ring1") && err.contains("--vdev="),
        "{err}"
    );

    let id = port_id(eal, "net_ring1");
    let port = DpdkPort::open(eal, id).unwrap();
    let err = DpdkPort::open(eal, id).unwrap_err().to_string();
    println!("port open twice: {err}");
    assert!(err.contains("already open"), "{err}");
    drop(port);
    let mut again = DpdkPort::open(eal, id).expect("a dropped port opens again");
    assert_eq!(again.port_id(), id);

    let err = again.alloc(&[0; 4000]).unwrap_err().to_string();
    assert!(err.contains("4000-byte frame does not fit"), "{err}");
    assert!(
        again.alloc(&[0; 2048]).is_ok(),
        "a frame of the mbuf's full room fits"
    );
    assert_pool_full(eal);
}

#[test]
fn open_ports_gives_a_tx_port_only_when_it_differs() {
    let eal = eal();
    let _ports = ports_lock();
    let (ring1, null0) = (port_id(eal, "net_ring1"), port_id(eal, "net_null0"));
    let (rx, tx) = dpdk::open_ports(args(), ring1, ring1).unwrap();
    assert_eq!(rx.port_id(), ring1);
    assert!(tx.is_none());
    drop(rx);
    let (rx, tx) = dpdk::open_ports(args(), ring1, null0).unwrap();
    assert_eq!(rx.port_id(), ring1);
    assert_eq!(tx.map(|t| t.info().model), Some("net_null".to_string()));
}

#[test]
fn a_second_eal_with_other_arguments_is_refused() {
    let eal = eal();
    assert!(
        std::ptr::eq(eal, Eal::init(args()).unwrap()),
        "same arguments, same EAL"
    );
    let other: Vec<String> = ["-l", "0", "--no-huge", "--vdev=net_null1"]
        .map(String::from)
        .to_vec();
    let err = Eal::init(&other).unwrap_err();
    println!("second EAL: {err}");
    assert!(matches!(err, NicError::Config(_)));
    let err = err.to_string();
    assert!(err.contains("already initialised"), "{err}");
    assert!(err.contains("--vdev=net_null1"), "{err}");
    assert_eq!(eal.args(), args());
}

/// Set in the child process of [`bad_eal_arguments_are_refused_with_the_reason`].
const CHILD: &str = "NEXUS_DPDK_TEST_BAD_EAL_CHILD";

#[test]
fn bad_eal_arguments_are_refused_with_the_reason() {
    // EAL can fail once per process only, so the failing init runs in a child process: this
    // test binary again, running just `bad_eal_arguments_child`.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "bad_eal_arguments_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    // EAL prints its usage text to stdout: show only this test's lines unless it failed.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{stderr}"
    );
    for line in stdout.lines().filter(|l| l.contains("EAL init")) {
        println!("child: {line}");
    }
}

#[test]
#[ignore = "run in a child process by bad_eal_arguments_are_refused_with_the_reason"]
fn bad_eal_arguments_child() {
    if std::env::var_os(CHILD).is_none() {
        return; // run with `--include-ignored` among the others: it would fail the shared EAL
    }
    let bad: Vec<String> = ["-l", "0", "--no-huge", "--no-such-eal-option"]
        .map(String::from)
        .to_vec();
    let err = Eal::init(&bad).unwrap_err().to_string();
    println!("\nfirst EAL init: {err}");
    assert!(err.contains("DPDK EAL initialisation with"), "{err}");
    assert!(err.contains("--no-such-eal-option"), "{err}");
    // DPDK keeps what it parsed from a failed attempt and then fails every retry (here with
    // "Option -l is ignored, because (-l) is set!"): Eal::init says so instead of trying.
    let err = Eal::init(args()).unwrap_err().to_string();
    println!("\nsecond EAL init: {err}");
    assert!(err.contains("an earlier DPDK EAL initialisation"), "{err}");
    assert!(err.contains("restart the process"), "{err}");
}
