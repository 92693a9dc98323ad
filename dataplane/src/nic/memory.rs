//! The memory backend: ports joined by bounded channels, for unit tests and simulations.
//!
//! A full channel drops what does not fit, as a NIC ring does.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{NicError, NicInfo, Packet, Port};

/// A frame in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemPacket(pub Vec<u8>);

impl Packet for MemPacket {
    fn data(&self) -> &[u8] {
        &self.0
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// One end of a memory link: what it transmits arrives at the other end.
pub struct MemoryPort {
    name: String,
    tx: SyncSender<Vec<u8>>,
    rx: Arc<Mutex<Receiver<Vec<u8>>>>,
    wait: Duration,
}

/// Frames a memory link holds in each direction before it drops.
pub const RING: usize = 4096;

/// Two ports joined back to back: `a` transmits to `b` and `b` to `a`.
pub fn pair(name: &str) -> (MemoryPort, MemoryPort) {
    let (to_b, from_a) = std::sync::mpsc::sync_channel(RING);
    let (to_a, from_b) = std::sync::mpsc::sync_channel(RING);
    let a = MemoryPort {
        name: format!("{name}.a"),
        tx: to_b,
        rx: Arc::new(Mutex::new(from_b)),
        wait: Duration::from_millis(100),
    };
    let b = MemoryPort {
        name: format!("{name}.b"),
        tx: to_a,
        rx: Arc::new(Mutex::new(from_a)),
        wait: Duration::from_millis(100),
    };
    (a, b)
}

impl MemoryPort {
    /// How long `rx_burst` waits for a first frame (100 ms unless changed).
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }
}

impl Port for MemoryPort {
    type Packet = MemPacket;

    fn rx_burst(&mut self, out: &mut Vec<MemPacket>, max: usize) -> Result<usize, NicError> {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        if max == 0 {
            return Ok(0);
        }
        match rx.recv_timeout(self.wait) {
            Ok(f) => {
                out.push(MemPacket(f));
                n += 1;
            }
            Err(RecvTimeoutError::Timeout) => return Ok(0),
            Err(RecvTimeoutError::Disconnected) => return Err(NicError::Closed),
        }
        while n < max {
            match rx.try_recv() {
                Ok(f) => {
                    out.push(MemPacket(f));
                    n += 1;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        Ok(n)
    }

    fn tx_burst(&mut self, pkts: &mut Vec<MemPacket>) -> Result<usize, NicError> {
        let mut sent = 0;
        for p in pkts.drain(..) {
            match self.tx.try_send(p.0) {
                Ok(()) => sent += 1,
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return Err(NicError::Closed),
            }
        }
        Ok(sent)
    }

    fn alloc(&mut self, data: &[u8]) -> Result<MemPacket, NicError> {
        Ok(MemPacket(data.to_vec()))
    }

    fn info(&self) -> NicInfo {
        NicInfo {
            backend: "memory",
            device: self.name.clone(),
            model: "memory".into(),
            mac: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_the_link_in_order_and_a_full_ring_drops() {
        let (mut a, mut b) = pair("t");
        let mut burst: Vec<MemPacket> = (0..3u8).map(|i| MemPacket(vec![i; 60])).collect();
        assert_eq!(a.tx_burst(&mut burst).unwrap(), 3);
        let mut got = Vec::new();
        assert_eq!(b.rx_burst(&mut got, 32).unwrap(), 3);
        assert_eq!(got[2].0, vec![2; 60]);
        let mut flood: Vec<MemPacket> = (0..RING + 10).map(|_| MemPacket(vec![0; 60])).collect();
        assert_eq!(a.tx_burst(&mut flood).unwrap(), RING);
        b.set_wait(Duration::from_millis(1));
        drop(a);
        let mut n = 0;
        while let Ok(k) = b.rx_burst(&mut Vec::new(), 64) {
            n += k;
        }
        assert_eq!(n, RING);
    }
}
