//! Tenant quotas in the data plane: concurrent connections and bandwidth.
//!
//! Every node belongs to exactly one tenant, so an engine enforces one [`TenantLimits`] on every
//! frame it forwards or delivers. The node publishes new limits through a [`LimitsHandle`]
//! (`arc-swap`, like the classifier's [`crate::policy::PolicyHandle`]); the engine reads them once
//! per burst, so a change applies from the next burst and costs the frames nothing.
//!
//! - **Connections.** A connection is a (source node id, stream id) pair. The engine keeps every
//!   open one in an exact table of at most [`MAX_CONNECTIONS`]; a connection that has sent
//!   nothing for more than [`CONNECTION_IDLE_S`] seconds is closed (time is kept in whole
//!   seconds, so it closes 30 to 32 s after its last frame). A frame of a new connection while
//!   `max_connections` are open is dropped (`quota_connections`); frames of open connections
//!   pass. Lowering the limit below the connections open closes none of them: new ones are
//!   refused until enough have gone idle. Without a limit connections are still tracked, for
//!   the usage meter (`Stats::flows_opened`, `Stats::connections`).
//! - **A full table.** At [`MAX_CONNECTIONS`] open connections a frame of a connection the table
//!   does not hold is refused when a limit at or below the table's size is set (the limit is
//!   reached); otherwise (no limit, or one above the table's size) it passes without being
//!   tracked and is counted in `Stats::connections_untracked`, never as a connection opened.
//! - **Bandwidth.** A token bucket of bits: it refills at `max_bandwidth_bps` and holds one
//!   second's worth (at least [`MIN_BURST_BYTES`]); a frame takes its whole length as received
//!   (Ethernet header included). A frame the bucket cannot pay for is dropped
//!   (`quota_bandwidth`); a frame longer than the whole burst passes from a full bucket, so no
//!   frame size is refused forever.
//!
//! A frame a policy drops uses no quota, and neither does a frame a quota drops: a refused
//! connection takes no bandwidth, and a frame over the bandwidth opens no connection.
//!
//! The state here is free of I/O and clocks: time comes in as arguments (nanoseconds and seconds
//! since the engine started), so tests drive it by hand.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;

use crate::engine::DropReason;

/// Connections the data plane tracks at most (see the module docs for a full table).
pub const MAX_CONNECTIONS: usize = 65_536;
/// Seconds without a frame after which a connection is closed.
pub const CONNECTION_IDLE_S: u32 = 30;
/// The least burst of the bandwidth bucket: one jumbo frame.
pub const MIN_BURST_BYTES: u64 = 9_216;
/// Idle connections closed at most per call of [`Quota::begin_burst`], so a mass expiry is
/// spread over bursts instead of stalling one (a burst takes microseconds under load).
const EXPIRE_PER_BURST: usize = 4_096;
/// No slab entry.
pub(crate) const NIL: u32 = u32::MAX;

/// A tenant's data-plane quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TenantLimits {
    /// Concurrent connections (source node id, stream id) at most; `None`: unlimited. 0 admits
    /// no new connection.
    pub max_connections: Option<u64>,
    /// Bits per second of the frames forwarded and delivered (whole frames as received);
    /// `None`: unlimited. 0 admits no frame after the first [`MIN_BURST_BYTES`].
    pub max_bandwidth_bps: Option<u64>,
}

impl TenantLimits {
    /// No limits.
    pub const UNLIMITED: TenantLimits = TenantLimits {
        max_connections: None,
        max_bandwidth_bps: None,
    };
}

/// The limits an engine enforces, changeable while it runs: publish with [`LimitsHandle::set`];
/// the engine picks them up at its next burst.
#[derive(Debug)]
pub struct LimitsHandle {
    current: ArcSwap<TenantLimits>,
}

impl Default for LimitsHandle {
    fn default() -> LimitsHandle {
        LimitsHandle::new(TenantLimits::UNLIMITED)
    }
}

impl LimitsHandle {
    /// A handle holding `limits`.
    pub fn new(limits: TenantLimits) -> LimitsHandle {
        LimitsHandle {
            current: ArcSwap::from_pointee(limits),
        }
    }

    /// Publishes `limits`; returns whether they differ from the ones in force.
    pub fn set(&self, limits: TenantLimits) -> bool {
        let changed = **self.current.load() != limits;
        if changed {
            self.current.store(Arc::new(limits));
        }
        changed
    }

    /// The limits in force.
    #[inline]
    pub fn get(&self) -> TenantLimits {
        **self.current.load()
    }
}

/// How a frame the quotas admit stands to the connection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Of a connection open already.
    Existing,
    /// The first frame of a new connection.
    Opened,
    /// Of a connection the full table could not take.
    Untracked,
}

/// Quota state of one engine.
pub(crate) struct Quota {
    limits: TenantLimits,
    /// `max_connections`, `u64::MAX` for none.
    max_connections: u64,
    connections: Connections,
    bandwidth: Option<Bandwidth>,
}

impl Quota {
    pub(crate) fn new() -> Quota {
        Quota {
            limits: TenantLimits::UNLIMITED,
            max_connections: u64::MAX,
            connections: Connections::default(),
            bandwidth: None,
        }
    }

    /// Once per burst, before its frames: takes up `limits` if they changed, refills the
    /// bandwidth bucket and closes idle connections.
    #[inline]
    pub(crate) fn begin_burst(&mut self, limits: TenantLimits, now_ns: u64, now_s: u32) {
        if limits != self.limits {
            self.set_limits(limits, now_ns);
        }
        if let Some(b) = &mut self.bandwidth {
            b.refill(now_ns);
        }
        self.connections.expire(now_s, EXPIRE_PER_BURST);
    }

    fn set_limits(&mut self, limits: TenantLimits, now_ns: u64) {
        self.limits = limits;
        self.max_connections = limits.max_connections.unwrap_or(u64::MAX);
        self.bandwidth = match (limits.max_bandwidth_bps, self.bandwidth.take()) {
            (None, _) => None,
            (Some(bps), Some(mut b)) => {
                b.set_rate(bps, now_ns);
                Some(b)
            }
            (Some(bps), None) => Some(Bandwidth::new(bps, now_ns)),
        };
    }

    /// Whether a frame of `bytes` bytes of connection (`src`, `stream`) is within the quotas;
    /// if so, it is accounted for. `hint` is where the caller last found this connection in the
    /// table (or [`NIL`]); it is updated, so a flow finds its connection without a hash lookup.
    #[inline]
    pub(crate) fn admit(
        &mut self,
        src: [u8; 16],
        stream: u32,
        bytes: usize,
        hint: &mut u32,
        now_s: u32,
    ) -> Result<Admission, DropReason> {
        let found = self.connections.find(src, stream, *hint, now_s);
        if found.is_none() && self.connections.active() as u64 >= self.max_connections {
            // Idle connections the burst's expiry has not reached yet make room first (when
            // there are none, this is one comparison).
            self.connections.expire(now_s, EXPIRE_PER_BURST);
            if self.connections.active() as u64 >= self.max_connections {
                return Err(DropReason::QuotaConnections);
            }
        }
        if let Some(b) = &mut self.bandwidth
            && !b.take(bytes as u64 * 8)
        {
            return Err(DropReason::QuotaBandwidth);
        }
        Ok(match found {
            Some(i) => {
                self.connections.touch(i, now_s);
                *hint = i;
                Admission::Existing
            }
            None => match self.connections.open(src, stream, now_s) {
                Some(i) => {
                    *hint = i;
                    Admission::Opened
                }
                None => Admission::Untracked,
            },
        })
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.connections.active()
    }

    /// Closes idle connections (outside bursts: when the ingress is idle).
    pub(crate) fn expire(&mut self, now_s: u32) {
        self.connections.expire(now_s, EXPIRE_PER_BURST);
    }
}

/// One open connection, in a slab; free entries have `last_seen == 0` and are chained through
/// `next`.
#[derive(Clone, Copy)]
struct Conn {
    src: [u8; 16],
    stream: u32,
    /// Seconds since the engine started, + 1, of the connection's last frame.
    last_seen: u32,
    /// Neighbours in last-seen order (`prev` is more recent).
    prev: u32,
    next: u32,
}

/// The open connections: a hash index into a slab whose entries are also linked in last-seen
/// order, so idle ones are found at the tail without a scan. An entry moves to the head at most
/// once a second (when its `last_seen` second changes), which keeps the list ordered by
/// `last_seen` while most frames only compare one number.
struct Connections {
    index: HashMap<([u8; 16], u32), u32, RandomState>,
    slab: Vec<Conn>,
    free: u32,
    newest: u32,
    oldest: u32,
    active: usize,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            index: HashMap::with_hasher(RandomState::default()),
            slab: Vec::new(),
            free: NIL,
            newest: NIL,
            oldest: NIL,
            active: 0,
        }
    }
}

impl Connections {
    fn active(&self) -> usize {
        self.active
    }

    fn idle(&self, i: u32, now_s: u32) -> bool {
        now_s.saturating_sub(self.slab[i as usize].last_seen) > CONNECTION_IDLE_S
    }

    /// The entry of (`src`, `stream`) if it is open; one idle past the window is closed here
    /// (the burst's expiry may not have reached it yet).
    #[inline]
    fn find(&mut self, src: [u8; 16], stream: u32, hint: u32, now_s: u32) -> Option<u32> {
        let i = match self.slab.get(hint as usize) {
            Some(c) if c.last_seen != 0 && c.stream == stream && c.src == src => hint,
            _ => *self.index.get(&(src, stream))?,
        };
        if self.idle(i, now_s) {
            self.remove(i);
            return None;
        }
        Some(i)
    }

    #[inline]
    fn touch(&mut self, i: u32, now_s: u32) {
        let c = &mut self.slab[i as usize];
        if c.last_seen != now_s {
            c.last_seen = now_s;
            self.unlink(i);
            self.push_newest(i);
        }
    }

    /// Opens (`src`, `stream`); `None` when the table is full.
    fn open(&mut self, src: [u8; 16], stream: u32, now_s: u32) -> Option<u32> {
        if self.active >= MAX_CONNECTIONS {
            return None;
        }
        let conn = Conn {
            src,
            stream,
            last_seen: now_s.max(1),
            prev: NIL,
            next: NIL,
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.slab[i as usize].next;
            self.slab[i as usize] = conn;
            i
        } else {
            self.slab.push(conn);
            (self.slab.len() - 1) as u32
        };
        self.push_newest(i);
        self.index.insert((src, stream), i);
        self.active += 1;
        Some(i)
    }

    fn remove(&mut self, i: u32) {
        self.unlink(i);
        let c = &mut self.slab[i as usize];
        let key = (c.src, c.stream);
        c.last_seen = 0;
        c.next = self.free;
        self.free = i;
        self.index.remove(&key);
        self.active -= 1;
    }

    /// Closes at most `budget` connections idle past the window, oldest first.
    fn expire(&mut self, now_s: u32, budget: usize) {
        for _ in 0..budget {
            if self.oldest == NIL || !self.idle(self.oldest, now_s) {
                return;
            }
            self.remove(self.oldest);
        }
    }

    fn unlink(&mut self, i: u32) {
        let Conn { prev, next, .. } = self.slab[i as usize];
        if prev == NIL {
            self.newest = next;
        } else {
            self.slab[prev as usize].next = next;
        }
        if next == NIL {
            self.oldest = prev;
        } else {
            self.slab[next as usize].prev = prev;
        }
    }

    fn push_newest(&mut self, i: u32) {
        let old = self.newest;
        let c = &mut self.slab[i as usize];
        c.prev = NIL;
        c.next = old;
        if old == NIL {
            self.oldest = i;
        } else {
            self.slab[old as usize].prev = i;
        }
        self.newest = i;
    }
}

/// A token bucket of bits, refilled once per burst with integer arithmetic that loses nothing
/// (`frac` keeps the remainder below one bit, in bit·ns).
struct Bandwidth {
    bps: u64,
    capacity: u64,
    tokens: u64,
    frac: u64,
    last_ns: u64,
}

fn capacity(bps: u64) -> u64 {
    bps.max(MIN_BURST_BYTES * 8)
}

impl Bandwidth {
    /// A full bucket.
    fn new(bps: u64, now_ns: u64) -> Bandwidth {
        Bandwidth {
            bps,
            capacity: capacity(bps),
            tokens: capacity(bps),
            frac: 0,
            last_ns: now_ns,
        }
    }

    #[inline]
    fn refill(&mut self, now_ns: u64) {
        if now_ns <= self.last_ns {
            return;
        }
        let earned =
            u128::from(now_ns - self.last_ns) * u128::from(self.bps) + u128::from(self.frac);
        self.last_ns = now_ns;
        let tokens = u128::from(self.tokens) + earned / 1_000_000_000;
        if tokens >= u128::from(self.capacity) {
            self.tokens = self.capacity;
            self.frac = 0;
        } else {
            self.tokens = tokens as u64;
            self.frac = (earned % 1_000_000_000) as u64;
        }
    }

    #[inline]
    fn take(&mut self, bits: u64) -> bool {
        if self.tokens >= bits {
            self.tokens -= bits;
            true
        } else if self.tokens == self.capacity {
            // Longer than the whole burst: let it through from a full bucket.
            self.tokens = 0;
            true
        } else {
            false
        }
    }

    /// A new rate: what was earned at the old one is kept, up to the new burst.
    fn set_rate(&mut self, bps: u64, now_ns: u64) {
        self.refill(now_ns);
        self.bps = bps;
        self.capacity = capacity(bps);
        self.tokens = self.tokens.min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];

    fn limits(max_connections: Option<u64>, max_bandwidth_bps: Option<u64>) -> TenantLimits {
        TenantLimits {
            max_connections,
            max_bandwidth_bps,
        }
    }

    /// Admits a frame with no remembered slot.
    fn admit(
        q: &mut Quota,
        src: [u8; 16],
        stream: u32,
        bytes: usize,
        now_s: u32,
    ) -> Result<Admission, DropReason> {
        let mut hint = NIL;
        q.admit(src, stream, bytes, &mut hint, now_s)
    }

    #[test]
    fn connections_are_keyed_by_source_and_stream_and_limited() {
        let mut q = Quota::new();
        q.begin_burst(limits(Some(3), None), 0, 1);
        assert_eq!(admit(&mut q, A, 1, 100, 1), Ok(Admission::Opened));
        assert_eq!(admit(&mut q, A, 2, 100, 1), Ok(Admission::Opened));
        assert_eq!(admit(&mut q, B, 1, 100, 1), Ok(Admission::Opened));
        assert_eq!(admit(&mut q, A, 1, 100, 1), Ok(Admission::Existing));
        assert_eq!(
            admit(&mut q, B, 2, 100, 1),
            Err(DropReason::QuotaConnections)
        );
        // The refused one took no slot, and open ones keep passing.
        assert_eq!(q.connections(), 3);
        assert_eq!(admit(&mut q, B, 1, 100, 1), Ok(Admission::Existing));
    }

    #[test]
    fn an_idle_connection_closes_after_the_window_and_a_busy_one_does_not() {
        let mut q = Quota::new();
        q.begin_burst(limits(Some(2), None), 0, 1);
        admit(&mut q, A, 1, 100, 1).unwrap();
        admit(&mut q, A, 2, 100, 1).unwrap();
        // A keeps stream 2 busy every 10 s; stream 1 stays quiet.
        for now_s in [11, 21, 31] {
            q.begin_burst(limits(Some(2), None), 0, now_s);
            assert_eq!(admit(&mut q, A, 2, 100, now_s), Ok(Admission::Existing));
            assert_eq!(q.connections(), 2, "at {now_s} s");
        }
        // At 31 s stream 1 had been idle for 30 s and stayed open; at 32 s it is closed.
        q.begin_burst(limits(Some(2), None), 0, 32);
        assert_eq!(q.connections(), 1);
        assert_eq!(admit(&mut q, B, 9, 100, 32), Ok(Admission::Opened));
        // Coming back, stream 1 is a new connection, and over the limit now.
        assert_eq!(
            admit(&mut q, A, 1, 100, 32),
            Err(DropReason::QuotaConnections)
        );
    }

    #[test]
    fn a_stale_connection_found_before_the_expiry_reached_it_is_new() {
        let mut q = Quota::new();
        admit(&mut q, A, 1, 100, 1).unwrap();
        // No burst start in between: the lookup itself notices.
        assert_eq!(admit(&mut q, A, 1, 100, 40), Ok(Admission::Opened));
        assert_eq!(q.connections(), 1);
    }

    #[test]
    fn idle_connections_left_over_by_a_mass_expiry_do_not_count_against_the_limit() {
        let mut q = Quota::new();
        for s in 0..10_000 {
            admit(&mut q, A, s, 1, 1).unwrap();
        }
        // The burst closes 4,096 of the 10,000 idle ones; 5,904 are left, over the limit.
        q.begin_burst(limits(Some(5_000), None), 0, 40);
        assert_eq!(q.connections(), 10_000 - EXPIRE_PER_BURST);
        assert_eq!(admit(&mut q, B, 1, 1, 40), Ok(Admission::Opened));
        assert!(q.connections() < 5_000);
    }

    #[test]
    fn the_hint_finds_the_connection_and_a_wrong_hint_is_harmless() {
        let mut q = Quota::new();
        let mut hint = NIL;
        assert_eq!(q.admit(A, 1, 1, &mut hint, 1), Ok(Admission::Opened));
        let a1 = hint;
        let mut other = NIL;
        q.admit(B, 1, 1, &mut other, 1).unwrap();
        // B's slot given for A: the index is asked, and the hint corrected.
        let mut wrong = other;
        assert_eq!(q.admit(A, 1, 1, &mut wrong, 1), Ok(Admission::Existing));
        assert_eq!(wrong, a1);
        // Out of range.
        let mut far = 1_000_000;
        assert_eq!(q.admit(A, 1, 1, &mut far, 1), Ok(Admission::Existing));
    }

    #[test]
    fn slots_of_closed_connections_are_reused_and_the_order_holds() {
        let mut q = Quota::new();
        for round in 0..5u32 {
            let now_s = 1 + round * 40;
            q.begin_burst(TenantLimits::UNLIMITED, 0, now_s);
            assert_eq!(
                q.connections(),
                0,
                "round {round}: the last round's are gone"
            );
            for s in 0..100 {
                assert_eq!(admit(&mut q, A, s, 1, now_s), Ok(Admission::Opened));
            }
            // Touch every other one a second later: the list reorders.
            for s in (0..100).step_by(2) {
                assert_eq!(admit(&mut q, A, s, 1, now_s + 1), Ok(Admission::Existing));
            }
            // Only the untouched ones have expired at now + 31.
            q.begin_burst(TenantLimits::UNLIMITED, 0, now_s + 31);
            assert_eq!(q.connections(), 50);
        }
        assert_eq!(q.connections.slab.len(), 100, "closed entries are reused");
    }

    #[test]
    fn a_full_table_passes_untracked_without_a_limit_and_refuses_with_one() {
        let mut q = Quota::new();
        for s in 0..MAX_CONNECTIONS as u32 {
            assert_eq!(admit(&mut q, A, s, 1, 1), Ok(Admission::Opened));
        }
        assert_eq!(admit(&mut q, B, 0, 1, 1), Ok(Admission::Untracked));
        assert_eq!(admit(&mut q, A, 7, 1, 1), Ok(Admission::Existing));
        q.begin_burst(limits(Some(MAX_CONNECTIONS as u64 + 10), None), 0, 1);
        assert_eq!(admit(&mut q, B, 0, 1, 1), Ok(Admission::Untracked));
        q.begin_burst(limits(Some(MAX_CONNECTIONS as u64), None), 0, 1);
        assert_eq!(admit(&mut q, B, 0, 1, 1), Err(DropReason::QuotaConnections));
        // The expiry is spread over bursts.
        q.begin_burst(limits(Some(MAX_CONNECTIONS as u64), None), 0, 40);
        assert_eq!(q.connections(), MAX_CONNECTIONS - EXPIRE_PER_BURST);
    }

    #[test]
    fn bandwidth_admits_the_burst_then_the_rate_exactly() {
        let mut q = Quota::new();
        // 8 Mbit/s: 1,000,000 bytes a second, and a burst of as much.
        q.begin_burst(limits(None, Some(8_000_000)), 0, 1);
        let passed = (0..1_500)
            .filter(|_| admit(&mut q, A, 1, 1_000, 1).is_ok())
            .count();
        assert_eq!(passed, 1_000);
        assert_eq!(
            admit(&mut q, A, 1, 1_000, 1),
            Err(DropReason::QuotaBandwidth)
        );
        // Half a second later, half a second's worth.
        q.begin_burst(limits(None, Some(8_000_000)), S / 2, 1);
        let passed = (0..1_500)
            .filter(|_| admit(&mut q, A, 1, 1_000, 1).is_ok())
            .count();
        assert_eq!(passed, 500);
        // A refill in small steps loses nothing to rounding: 1,000 steps of 1 µs + 1 ns earn
        // 8,008 bits, one 1,000-byte frame and a bit.
        let mut t = S / 2;
        for _ in 0..1_000 {
            t += 1_001;
            q.begin_burst(limits(None, Some(8_000_000)), t, 1);
        }
        assert_eq!(admit(&mut q, A, 1, 1_000, 1), Ok(Admission::Existing));
        assert_eq!(admit(&mut q, A, 1, 1, 1), Ok(Admission::Existing));
        assert_eq!(admit(&mut q, A, 1, 1, 1), Err(DropReason::QuotaBandwidth));
    }

    #[test]
    fn bandwidth_over_a_long_run_stays_within_rate_and_burst() {
        let mut q = Quota::new();
        let bps = 80_000_000; // 10 MB/s
        let frame = 1_500;
        let mut sent = 0u64;
        let mut passed = 0u64;
        // 10 s in 1 ms bursts, offering twice the rate.
        for ms in 0..10_000u64 {
            q.begin_burst(
                limits(None, Some(bps)),
                ms * 1_000_000,
                1 + (ms / 1000) as u32,
            );
            for _ in 0..14 {
                sent += frame as u64;
                if admit(&mut q, A, 1, frame, 1 + (ms / 1000) as u32).is_ok() {
                    passed += frame as u64;
                }
            }
        }
        assert!(sent >= 2 * bps / 8 * 10, "twice the rate is offered");
        // Earned: 9.999 s at the rate (the last burst is at 9.999 s) plus the burst.
        let allowed = bps / 8 * 9_999 / 1_000 + bps / 8;
        assert!(passed <= allowed, "{passed} > {allowed}");
        assert!(
            passed + frame as u64 > allowed,
            "{passed} well under {allowed}"
        );
    }

    #[test]
    fn a_frame_longer_than_the_burst_passes_from_a_full_bucket() {
        let mut q = Quota::new();
        q.begin_burst(limits(None, Some(8)), 0, 1);
        assert_eq!(
            q.bandwidth.as_ref().unwrap().capacity,
            MIN_BURST_BYTES * 8,
            "at least a jumbo frame"
        );
        assert!(admit(&mut q, A, 1, 20_000, 1).is_ok());
        assert_eq!(admit(&mut q, A, 1, 64, 1), Err(DropReason::QuotaBandwidth));
    }

    #[test]
    fn changed_limits_apply_and_removing_them_admits_everything() {
        let mut q = Quota::new();
        q.begin_burst(TenantLimits::UNLIMITED, 0, 1);
        for s in 0..10 {
            assert!(admit(&mut q, A, s, 100_000, 1).is_ok());
        }
        // Lower than what is open: the open ones stay, new ones are refused.
        q.begin_burst(limits(Some(5), Some(8_000_000)), 0, 1);
        assert_eq!(admit(&mut q, A, 3, 100, 1), Ok(Admission::Existing));
        assert_eq!(
            admit(&mut q, A, 10, 100, 1),
            Err(DropReason::QuotaConnections)
        );
        // A lower rate cuts what the bucket holds down to the new burst.
        q.begin_burst(limits(Some(5), Some(800_000)), 0, 1);
        let passed = (0..20)
            .filter(|_| admit(&mut q, A, 3, 10_000, 1).is_ok())
            .count();
        assert_eq!(passed, 10);
        q.begin_burst(TenantLimits::UNLIMITED, 0, 1);
        for s in 0..100 {
            assert!(admit(&mut q, A, s, 1_000_000, 1).is_ok());
        }
    }

    #[test]
    fn the_handle_reports_changes() {
        let h = LimitsHandle::default();
        assert_eq!(h.get(), TenantLimits::UNLIMITED);
        assert!(h.set(limits(Some(1), None)));
        assert!(!h.set(limits(Some(1), None)));
        assert_eq!(h.get().max_connections, Some(1));
    }
}
