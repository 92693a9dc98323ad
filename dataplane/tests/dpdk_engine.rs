//! The forwarding engine on DPDK: frames go in through `net_ring0` (whose transmit side feeds its
//! receive side) and the engine forwards them out of `net_ring1`, where the test reads them back.
//! A test binary of its own: DPDK allows one EAL per process.

#![cfg(feature = "dpdk")]

mod common;

use nexus_dataplane::engine::Engine;
use nexus_dataplane::nic::dpdk::{DpdkPort, Eal};
use nexus_dataplane::nic::{BURST, Packet, Port};

struct Ring {
    engine: Engine<DpdkPort>,
}

impl common::Rig for Ring {
    type P = DpdkPort;

    fn engine(&mut self) -> &mut Engine<DpdkPort> {
        &mut self.engine
    }

    fn send(&mut self, frames: &[Vec<u8>]) {
        let port = self.engine.rx_port();
        let mut burst: Vec<_> = frames
            .iter()
            .map(|f| port.alloc(f).expect("mbuf"))
            .collect();
        let want = burst.len();
        assert_eq!(
            port.tx_burst(&mut burst).expect("tx"),
            want,
            "net_ring0 full"
        );
    }

    fn receive(&mut self) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while self.engine.tx_port().rx_burst(&mut got, BURST).expect("rx") > 0 {}
        got.iter().map(|p| p.data().to_vec()).collect()
    }
}

#[test]
fn on_net_ring_allowed_frames_pass_intact_denied_never_and_limits_hold() {
    let args: Vec<String> = format!(
        "-l 0 --no-huge -m 64 --no-pci --no-shconf --no-telemetry \
         --file-prefix=nexus-engine-test-{} --vdev=net_ring0 --vdev=net_ring1",
        std::process::id()
    )
    .split_whitespace()
    .map(str::to_string)
    .collect();
    let eal = Eal::init(&args).expect("EAL starts with virtual devices and no hugepages");
    let id = |name: &str| {
        eal.ports()
            .into_iter()
            .find(|(_, n)| n == name)
            .expect(name)
            .0
    };
    let rx = DpdkPort::open(eal, id("net_ring0")).expect("net_ring0");
    let tx = DpdkPort::open(eal, id("net_ring1")).expect("net_ring1");
    let mut rig = Ring {
        engine: common::engine(rx, Some(tx)),
    };
    common::allowed_pass_denied_never_and_limits_hold(&mut rig, 1500);
}
