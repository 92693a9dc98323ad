//! The DPDK backend (cargo feature `dpdk`): poll-mode drivers through `csrc/dpdk_shim.c`.
//!
//! - [`Eal`]: DPDK's environment abstraction layer, initialised once per process, with the one
//!   packet buffer pool every port of this process draws from;
//! - [`DpdkPort`]: one DPDK port (one RX and one TX queue), set up and started when opened;
//! - [`DpdkPacket`]: one frame in an mbuf, returned to the pool when dropped;
//! - [`open_ports`]: what `NicSpec::Dpdk` asks for, in one call.
//!
//! # EAL arguments
//!
//! Without hugepages or a NIC (CI, laptops) this works, with virtual devices only:
//!
//! ```text
//! -l 0 --no-huge -m 64 --no-pci --no-shconf --no-telemetry --file-prefix=<unique> \
//!     --vdev=net_ring0 --vdev=net_null0
//! ```
//!
//! `-m 64` (MiB, also the `--no-huge` default) holds the buffer pool ([`POOL_MBUFS`] mbufs, about
//! 19 MiB) and the drivers' rings; under `--no-huge` EAL picks IOVA-as-VA by itself, so no
//! `--iova-mode` is needed. `net_ring` ports loop back what they transmit (up to 1023 frames
//! queued); `net_null` ports count and free what they transmit and receive as fast as asked
//! (frames of 64 bytes, contents not meaningful). `--file-prefix` keeps
//! concurrent DPDK processes from clashing over `/var/run/dpdk/<prefix>`. Drivers are plugins:
//! Debian's EAL loads every one in `/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0` at init, so no
//! `-d` is needed there; another build may need `-d <driver.so or dir>`.
//!
//! A mistake in the arguments fails [`Eal::init`] (EAL logs why on stderr and prints its usage on
//! stdout), and then every later call in the process: DPDK keeps what it parsed from a failed
//! attempt, so it cannot retry without a restart.
//!
//! # Threads
//!
//! `rte_eal_init` pins the thread that calls it to the first lcore of `-l`, and threads that
//! thread spawns afterwards inherit the pinning: call [`Eal::init`] (or [`open_ports`]) from the
//! data plane thread, after the control plane's threads are up. Ports and packets may move
//! between threads (DPDK queues need only one user at a time, which `&mut` gives), but bursts are
//! fastest on the EAL thread, whose lcore has a buffer cache in the pool. Mbufs freed on the EAL
//! thread go to that cache, which only that thread allocates from, so another thread can see
//! [`NicError::NoBuffer`] a little before the pool is truly empty.
//!
//! # Limits
//!
//! A frame is one mbuf segment: at most [`Eal::frame_room`] bytes (2048). RX scatter is not
//! enabled, so the default MTU of 1500 always fits.

// FFI to libdpdk: raw mbuf and mempool pointers cross into C, which Rust cannot check.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_uint};
use std::fmt;
use std::marker::{PhantomData, PhantomPinned};
use std::ptr::NonNull;
use std::sync::{Mutex, PoisonError};

use super::{BURST, NicError, NicInfo, Packet, Port};

/// Mbufs in the process's packet buffer pool (2^n - 1 is the most memory-efficient size).
pub const POOL_MBUFS: u32 = 8191;
/// Mbufs each lcore caches from the pool.
const POOL_CACHE: u32 = 256;
/// Extra `rte_eth_tx_burst` calls for frames the NIC did not take at first.
const TX_RETRIES: u32 = 2;
/// Room for a device or driver name (DPDK's `RTE_ETH_NAME_MAX_LEN` is 64).
const NAME_LEN: usize = 64;
/// The program name EAL sees as `argv[0]` (its option parser's complaints start with it).
const PROGRAM: &str = "nexus";

/// `struct rte_mbuf`, only ever behind a pointer.
#[repr(C)]
struct RteMbuf {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// `struct rte_mempool`, only ever behind a pointer.
#[repr(C)]
struct RteMempool {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

// The shim's functions (csrc/dpdk_shim.c). Those marked `safe` take no pointers and only read
// DPDK's static port table, which is valid before and after EAL init.
unsafe extern "C" {
    safe fn nexus_dpdk_strerror(code: c_int) -> *const c_char;
    fn nexus_dpdk_eal_init(argc: c_int, argv: *mut *mut c_char) -> c_int;
    safe fn nexus_dpdk_port_count() -> u16;
    safe fn nexus_dpdk_port_next(port_id: u16) -> u16;
    safe fn nexus_dpdk_max_ports() -> u16;
    safe fn nexus_dpdk_port_is_valid(port_id: u16) -> c_int;
    fn nexus_dpdk_port_name(port_id: u16, buf: *mut c_char, len: usize) -> c_int;
    fn nexus_dpdk_port_driver(port_id: u16, buf: *mut c_char, len: usize) -> c_int;
    fn nexus_dpdk_port_mac(port_id: u16, mac: *mut u8) -> c_int;
    fn nexus_dpdk_pool_create(
        name: *const c_char,
        mbufs: c_uint,
        cache: c_uint,
        err: *mut c_int,
    ) -> *mut RteMempool;
    fn nexus_dpdk_pool_data_room(pool: *mut RteMempool) -> u16;
    fn nexus_dpdk_pool_avail(pool: *mut RteMempool) -> c_uint;
    fn nexus_dpdk_port_start(
        port_id: u16,
        pool: *mut RteMempool,
        step: *mut *const c_char,
    ) -> c_int;
    fn nexus_dpdk_port_stop(port_id: u16) -> c_int;
    fn nexus_dpdk_rx_burst(port_id: u16, queue: u16, pkts: *mut *mut RteMbuf, n: u16) -> u16;
    fn nexus_dpdk_tx_burst(port_id: u16, queue: u16, pkts: *mut *mut RteMbuf, n: u16) -> u16;
    fn nexus_dpdk_mbuf_alloc(pool: *mut RteMempool) -> *mut RteMbuf;
    fn nexus_dpdk_mbuf_free(m: *mut RteMbuf);
    fn nexus_dpdk_mbuf_free_bulk(pkts: *mut *mut RteMbuf, n: c_uint);
    fn nexus_dpdk_mbuf_append(m: *mut RteMbuf, len: u16) -> *mut u8;
}

/// DPDK's text for a negative error code from the shim, with the code.
fn dpdk_error(code: c_int) -> String {
    let text = nexus_dpdk_strerror(code);
    if text.is_null() {
        return format!("error {}", code.unsigned_abs());
    }
    // SAFETY: rte_strerror returns a NUL-terminated string, static or in a per-thread buffer
    // that stays valid until this thread calls it again; it is copied out at once.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    format!("{text} (error {})", code.unsigned_abs())
}

/// A C string the shim wrote into `buf`, up to its NUL.
fn c_buf_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The process's packet buffer pool.
#[derive(Clone, Copy)]
struct Pool(NonNull<RteMempool>);

// SAFETY: a pktmbuf pool uses DPDK's default multi-producer/multi-consumer ring ops, so any
// thread may allocate from and free to it; the pool is never freed (it lives as long as EAL).
unsafe impl Send for Pool {}
// SAFETY: as for Send: every operation on the pool is thread-safe in DPDK.
unsafe impl Sync for Pool {}

/// DPDK's EAL, initialised once for the process, and the packet buffer pool all ports share.
pub struct Eal {
    args: Vec<String>,
    pool: Pool,
    frame_room: usize,
    /// Ports a live [`DpdkPort`] holds.
    open: Mutex<Vec<u16>>,
}

/// Where the process's EAL stands. DPDK allows one EAL per process, and a failed `rte_eal_init`
/// leaves state behind (options it parsed) that makes every later attempt fail too.
enum EalState {
    Down,
    Up(&'static Eal),
    /// Why the attempt failed, with its arguments.
    Failed(String),
}

static EAL: Mutex<EalState> = Mutex::new(EalState::Down);

impl Eal {
    /// Initialises DPDK's EAL with `args` (EAL arguments without the program name) and creates
    /// the packet buffer pool, or returns the EAL already initialised with the same arguments.
    ///
    /// Call it from the data plane thread: EAL pins the calling thread to the first lcore of
    /// `-l` (see the module docs). Fails, changing nothing, if EAL is already up with other
    /// arguments. If initialisation fails, every later call fails too (DPDK cannot retry in the
    /// same process), saying so.
    pub fn init(args: &[String]) -> Result<&'static Eal, NicError> {
        let mut state = EAL.lock().unwrap_or_else(PoisonError::into_inner);
        match &*state {
            EalState::Up(eal) if eal.args == args => return Ok(eal),
            EalState::Up(eal) => {
                return Err(NicError::Config(format!(
                    "DPDK's EAL is already initialised in this process with `{}`, and DPDK \
                     allows one EAL per process: it cannot also start with `{}`; use the same \
                     EAL arguments for every DPDK port of a process",
                    eal.args.join(" "),
                    args.join(" ")
                )));
            }
            EalState::Failed(why) => {
                return Err(NicError::Config(format!(
                    "an earlier DPDK EAL initialisation in this process failed ({why}), and DPDK \
                     cannot initialise again in the same process: fix the EAL arguments and \
                     restart the process"
                )));
            }
            EalState::Down => {}
        }
        match Self::start(args) {
            Ok(eal) => {
                *state = EalState::Up(eal);
                Ok(eal)
            }
            Err(e) => {
                *state = EalState::Failed(e.to_string());
                Err(e)
            }
        }
    }

    /// Runs `rte_eal_init` and creates the pool; called once per process.
    fn start(args: &[String]) -> Result<&'static Eal, NicError> {
        let argv = Self::argv(args)?;
        let argc = c_int::try_from(argv.len() - 1)
            .map_err(|_| NicError::Config(format!("{} EAL arguments are too many", args.len())))?;
        // SAFETY: argv holds argc valid NUL-terminated strings and a final NULL, leaked so they
        // outlive EAL (which may keep pointers into them and reorders the array); EAL is
        // initialised at most once, under the EAL mutex (Eal::init).
        let consumed = unsafe { nexus_dpdk_eal_init(argc, argv.as_mut_ptr()) };
        if consumed < 0 {
            let why = if consumed == -libc::EALREADY {
                "rte_eal_init was already called in this process by other code, and DPDK cannot \
                 be initialised twice: let Eal::init be the only caller"
                    .to_string()
            } else {
                let error = dpdk_error(consumed);
                format!("{error}; EAL logged the details above")
            };
            return Err(NicError::Config(format!(
                "DPDK EAL initialisation with `{}` failed: {why}",
                args.join(" ")
            )));
        }
        Self::warn_unused(argv, consumed);
        let pool = Self::create_pool()?;
        // SAFETY: pool is a live pktmbuf pool just created.
        let room = unsafe { nexus_dpdk_pool_data_room(pool.0.as_ptr()) };
        let eal: &'static Eal = Box::leak(Box::new(Eal {
            args: args.to_vec(),
            pool,
            frame_room: usize::from(room),
            open: Mutex::new(Vec::new()),
        }));
        tracing::info!(
            args = %args.join(" "),
            ports = nexus_dpdk_port_count(),
            "DPDK EAL initialised"
        );
        Ok(eal)
    }

    /// `argv` for `rte_eal_init`: the program name, `args`, NULL; leaked for the process.
    fn argv(args: &[String]) -> Result<&'static mut [*mut c_char], NicError> {
        let mut argv = Vec::with_capacity(args.len() + 2);
        for arg in std::iter::once(PROGRAM).chain(args.iter().map(String::as_str)) {
            let arg = CString::new(arg).map_err(|_| {
                NicError::Config(format!("EAL argument {arg:?} contains a NUL byte"))
            })?;
            argv.push(arg.into_raw());
        }
        argv.push(std::ptr::null_mut());
        Ok(argv.leak())
    }

    /// Logs arguments EAL did not take (it stops at `--` or an argument it does not know as an
    /// option, and moves the rest to the end of `argv`).
    fn warn_unused(argv: &[*mut c_char], consumed: c_int) {
        let first = usize::try_from(consumed).unwrap_or(0) + 1;
        let unused: Vec<String> = argv
            .iter()
            .skip(first)
            .take_while(|p| !p.is_null())
            // SAFETY: the non-null entries of argv are the leaked strings of Eal::argv, which
            // EAL only reorders.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        if !unused.is_empty() {
            tracing::warn!(
                unused = %unused.join(" "),
                "EAL ignored these arguments (not EAL options)"
            );
        }
    }

    fn create_pool() -> Result<Pool, NicError> {
        let mut err: c_int = 0;
        // SAFETY: the name is a NUL-terminated literal and err a valid out-pointer; EAL is up.
        let pool = unsafe {
            nexus_dpdk_pool_create(c"nexus_pktmbuf".as_ptr(), POOL_MBUFS, POOL_CACHE, &mut err)
        };
        NonNull::new(pool).map(Pool).ok_or_else(|| {
            NicError::Config(format!(
                "creating the DPDK packet buffer pool ({POOL_MBUFS} mbufs, about 19 MiB) failed: \
                 {}; give EAL more memory (`-m 128` with --no-huge, or more hugepages)",
                dpdk_error(err)
            ))
        })
    }

    /// The EAL arguments this process was initialised with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The ports EAL found, by id, with their device names (`net_ring0`, `0000:3b:00.0`).
    pub fn ports(&self) -> Vec<(u16, String)> {
        let max = nexus_dpdk_max_ports();
        let mut ports = Vec::new();
        let mut id = nexus_dpdk_port_next(0);
        while id < max {
            ports.push((id, port_name(id).unwrap_or_default()));
            id = nexus_dpdk_port_next(id + 1);
        }
        ports
    }

    /// Mbufs free in the pool, out of [`POOL_MBUFS`] (for metrics; a steady fall is a leak).
    ///
    /// Includes mbufs in each lcore's cache, which only that lcore's thread allocates from: a
    /// thread that is not an EAL lcore may get [`NicError::NoBuffer`] while some are still free.
    pub fn free_buffers(&self) -> usize {
        // SAFETY: the pool is live for the process; counting reads only atomics and lengths.
        let free = unsafe { nexus_dpdk_pool_avail(self.pool.0.as_ptr()) };
        free as usize
    }

    /// The largest frame one mbuf of the pool holds, in bytes.
    pub fn frame_room(&self) -> usize {
        self.frame_room
    }

    fn no_such_port(&self, port_id: u16) -> NicError {
        let ports = self.ports();
        let found = if ports.is_empty() {
            "no port".to_string()
        } else {
            let list: Vec<String> = ports.iter().map(|(id, n)| format!("{id}: {n}")).collect();
            format!("{} port(s) ({})", ports.len(), list.join(", "))
        };
        NicError::Config(format!(
            "no DPDK port {port_id}: EAL found {found}; add a virtual device to the EAL \
             arguments (`--vdev=net_ring0`, `--vdev=net_null0`) or bind a NIC to vfio-pci \
             (dpdk-devbind.py) and leave out --no-pci"
        ))
    }
}

impl fmt::Debug for Eal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eal")
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

fn port_name(port_id: u16) -> Result<String, c_int> {
    let mut buf = [0u8; NAME_LEN];
    // SAFETY: buf is writable for its length; the shim NUL-terminates within it.
    let ret = unsafe { nexus_dpdk_port_name(port_id, buf.as_mut_ptr().cast(), buf.len()) };
    if ret < 0 {
        Err(ret)
    } else {
        Ok(c_buf_string(&buf))
    }
}

fn port_driver(port_id: u16) -> Result<String, c_int> {
    let mut buf = [0u8; NAME_LEN];
    // SAFETY: buf is writable for its length; the shim NUL-terminates within it.
    let ret = unsafe { nexus_dpdk_port_driver(port_id, buf.as_mut_ptr().cast(), buf.len()) };
    if ret < 0 {
        Err(ret)
    } else {
        Ok(c_buf_string(&buf))
    }
}

fn port_mac(port_id: u16) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    // SAFETY: mac is writable for the 6 bytes the shim copies.
    let ret = unsafe { nexus_dpdk_port_mac(port_id, mac.as_mut_ptr()) };
    (ret == 0 && mac != [0; 6]).then_some(mac)
}

/// A port marked open in its [`Eal`]; unmarked when dropped.
struct Claim {
    eal: &'static Eal,
    port_id: u16,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut open = self.eal.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|&p| p != self.port_id);
    }
}

/// One DPDK port, started, with one RX and one TX queue (queue 0 of each).
///
/// Dropping it stops the port; it can then be opened again.
pub struct DpdkPort {
    claim: Claim,
    pool: Pool,
    name: String,
    driver: String,
    mac: Option<[u8; 6]>,
    /// Where `rte_eth_rx_burst` writes, so receiving allocates nothing.
    rx_scratch: [*mut RteMbuf; BURST],
}

// SAFETY: the port's queues are used only through `&mut self`, so by one thread at a time,
// which is all DPDK asks of a queue; the scratch pointers are never dereferenced between calls.
unsafe impl Send for DpdkPort {}

impl DpdkPort {
    /// Sets up and starts port `port_id` of `eal`: one RX queue (buffers from the EAL's pool) and
    /// one TX queue, 1024 descriptors each (or the driver's limit), promiscuous where supported.
    ///
    /// Fails if there is no such port (the error lists the ports EAL found), if the port is
    /// already open in this process, or if the driver refuses the setup (the error names the
    /// step); the port is left closed then.
    pub fn open(eal: &'static Eal, port_id: u16) -> Result<DpdkPort, NicError> {
        if nexus_dpdk_port_is_valid(port_id) == 0 {
            return Err(eal.no_such_port(port_id));
        }
        let name = port_name(port_id).map_err(|e| {
            NicError::Config(format!(
                "DPDK port {port_id}: reading its name failed: {}",
                dpdk_error(e)
            ))
        })?;
        let claim = {
            let mut open = eal.open.lock().unwrap_or_else(PoisonError::into_inner);
            if open.contains(&port_id) {
                return Err(NicError::Config(format!(
                    "DPDK port {port_id} ({name}) is already open in this process; a port is \
                     opened once: drop the other DpdkPort first or use another port"
                )));
            }
            open.push(port_id);
            Claim { eal, port_id }
        };
        let driver = port_driver(port_id).map_err(|e| {
            NicError::Config(format!(
                "DPDK port {port_id} ({name}): reading its device info failed: {}",
                dpdk_error(e)
            ))
        })?;
        let mut step: *const c_char = std::ptr::null();
        // SAFETY: the port is valid and claimed by this process alone (so not running), the pool
        // is live for the process, and step is a valid out-pointer.
        let ret = unsafe { nexus_dpdk_port_start(port_id, eal.pool.0.as_ptr(), &mut step) };
        if ret < 0 {
            let step = if step.is_null() {
                "setup".into()
            } else {
                // SAFETY: the shim sets step to one of its string literals.
                unsafe { CStr::from_ptr(step) }.to_string_lossy()
            };
            return Err(NicError::Config(format!(
                "DPDK port {port_id} ({name}, driver {driver}): {step} failed: {}",
                dpdk_error(ret)
            )));
        }
        let mac = port_mac(port_id);
        tracing::info!(port = port_id, %name, %driver, "DPDK port started");
        Ok(DpdkPort {
            claim,
            pool: eal.pool,
            name,
            driver,
            mac,
            rx_scratch: [std::ptr::null_mut(); BURST],
        })
    }

    /// The DPDK port id.
    pub fn port_id(&self) -> u16 {
        self.claim.port_id
    }
}

impl fmt::Debug for DpdkPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkPort")
            .field("port_id", &self.claim.port_id)
            .field("name", &self.name)
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl Drop for DpdkPort {
    fn drop(&mut self) {
        // SAFETY: the port was started by open and is stopped once, here; frames already
        // received stay valid (they belong to the pool, which outlives the port).
        let ret = unsafe { nexus_dpdk_port_stop(self.claim.port_id) };
        if ret < 0 {
            let error = dpdk_error(ret);
            tracing::warn!(port = self.claim.port_id, %error, "stopping DPDK port failed");
        }
    }
}

impl Port for DpdkPort {
    type Packet = DpdkPacket;

    /// Polls once (more only while bursts come back full and `max` is not reached); returns 0 at
    /// once when nothing has arrived.
    fn rx_burst(&mut self, out: &mut Vec<DpdkPacket>, max: usize) -> Result<usize, NicError> {
        let mut n = 0;
        while n < max {
            let want = (max - n).min(BURST);
            // SAFETY: rx_scratch has room for want <= BURST pointers; the queue is ours (&mut).
            let got = unsafe {
                nexus_dpdk_rx_burst(
                    self.claim.port_id,
                    0,
                    self.rx_scratch.as_mut_ptr(),
                    want as u16,
                )
            };
            let got = usize::from(got);
            // rte_eth_rx_burst hands over the first `got` entries, all non-null.
            out.extend(
                self.rx_scratch[..got]
                    .iter()
                    .filter_map(|&m| NonNull::new(m).map(DpdkPacket)),
            );
            n += got;
            if got < want {
                break;
            }
        }
        Ok(n)
    }

    /// Sends every frame the NIC takes, asking twice more for the rest before freeing them.
    fn tx_burst(&mut self, pkts: &mut Vec<DpdkPacket>) -> Result<usize, NicError> {
        let len = pkts.len();
        // DpdkPacket is a transparent mbuf pointer, so the Vec's buffer is the mbuf array DPDK
        // wants: no copy.
        let base = pkts.as_mut_ptr().cast::<*mut RteMbuf>();
        // SAFETY: the Vec forgets its frames (leaving their pointers in its buffer) and this
        // function owns them: each is taken by the NIC or freed below, so none is freed twice,
        // and a panic in between would leak rather than double free.
        unsafe { pkts.set_len(0) };
        let (mut sent, mut retries) = (0, 0);
        while sent < len {
            let want = (len - sent).min(usize::from(u16::MAX));
            // SAFETY: base[sent..sent + want] are valid mbufs owned here (see above); the queue is
            // ours (&mut). The NIC owns the ones it takes from then on.
            let took =
                unsafe { nexus_dpdk_tx_burst(self.claim.port_id, 0, base.add(sent), want as u16) };
            sent += usize::from(took);
            if usize::from(took) < want {
                if retries == TX_RETRIES {
                    break;
                }
                retries += 1;
            }
        }
        if sent < len {
            // SAFETY: base[sent..len] are valid mbufs the NIC did not take, owned here, freed
            // once.
            unsafe { nexus_dpdk_mbuf_free_bulk(base.add(sent), (len - sent) as c_uint) };
        }
        Ok(sent)
    }

    fn free_burst(&mut self, pkts: &mut Vec<DpdkPacket>) {
        let len = pkts.len();
        if len == 0 {
            return;
        }
        let base = pkts.as_mut_ptr().cast::<*mut RteMbuf>();
        // SAFETY: as in tx_burst: the Vec forgets its frames, whose pointers stay in its buffer,
        // and each is freed exactly once by the bulk free below.
        unsafe {
            pkts.set_len(0);
            nexus_dpdk_mbuf_free_bulk(base, len as c_uint);
        }
    }

    fn alloc(&mut self, data: &[u8]) -> Result<DpdkPacket, NicError> {
        let room = self.claim.eal.frame_room;
        let len = match u16::try_from(data.len()) {
            Ok(len) if data.len() <= room => len,
            _ => {
                return Err(NicError::Config(format!(
                    "a {}-byte frame does not fit a DPDK mbuf ({room} bytes)",
                    data.len()
                )));
            }
        };
        // SAFETY: the pool is live for the process.
        let m = unsafe { nexus_dpdk_mbuf_alloc(self.pool.0.as_ptr()) };
        let pkt = NonNull::new(m).map(DpdkPacket).ok_or(NicError::NoBuffer)?;
        // SAFETY: pkt is a fresh, empty mbuf we own; its room was checked above.
        let dst = unsafe { nexus_dpdk_mbuf_append(pkt.0.as_ptr(), len) };
        if dst.is_null() {
            return Err(NicError::Config(format!(
                "a {len}-byte frame does not fit a DPDK mbuf ({room} bytes)"
            )));
        }
        // SAFETY: dst points at len writable bytes inside the mbuf, which data cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(pkt)
    }

    fn info(&self) -> NicInfo {
        NicInfo {
            backend: "dpdk",
            device: format!("{} (port {})", self.name, self.claim.port_id),
            model: self.driver.clone(),
            mac: self.mac,
        }
    }
}

/// One frame in a DPDK mbuf (first segment only: RX scatter is off), returned to the pool when
/// dropped.
#[repr(transparent)]
pub struct DpdkPacket(NonNull<RteMbuf>);

// SAFETY: the mbuf is owned by this value alone (a driver or the pool hands out each mbuf once,
// and this backend never clones mbufs), and freeing to the pool is thread-safe.
unsafe impl Send for DpdkPacket {}

/// Offsets in `struct rte_mbuf` (DPDK 22.11) of the fields a frame's bytes are found from; the
/// shim's `_Static_assert`s fail the build against a DPDK with another layout.
const MBUF_BUF_ADDR: usize = 0;
const MBUF_DATA_OFF: usize = 16;
const MBUF_DATA_LEN: usize = 40;

impl DpdkPacket {
    /// The first segment's address and length, read from the mbuf itself: no call into the
    /// shim per frame.
    #[inline(always)]
    fn bytes(&self) -> (*mut u8, usize) {
        let m = self.0.as_ptr().cast::<u8>();
        // SAFETY: the mbuf is valid while self lives; these offsets are pinned to the headers
        // the shim was built against (see MBUF_*), and each field is naturally aligned in the
        // cache-line-aligned mbuf.
        unsafe {
            let buf = m.add(MBUF_BUF_ADDR).cast::<*mut u8>().read();
            let off = m.add(MBUF_DATA_OFF).cast::<u16>().read();
            let len = m.add(MBUF_DATA_LEN).cast::<u16>().read();
            (buf.add(usize::from(off)), usize::from(len))
        }
    }
}

impl Packet for DpdkPacket {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        let (data, len) = self.bytes();
        // SAFETY: the first segment's len bytes at data are initialised frame bytes inside the
        // mbuf, which lives (unchanged but through &mut self) as long as the borrow of self.
        unsafe { std::slice::from_raw_parts(data, len) }
    }

    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        let (data, len) = self.bytes();
        // SAFETY: as for data; the mbuf is not shared (see Send), so &mut self makes this the
        // only access to its bytes.
        unsafe { std::slice::from_raw_parts_mut(data, len) }
    }

    #[inline(always)]
    fn prefetch_descriptor(&self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                self.0.as_ptr().cast::<i8>(),
            )
        };
    }

    #[inline(always)]
    fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            let (data, _) = self.bytes();
            // SAFETY: a prefetch is a hint; it never faults, whatever the address.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    data as *const i8,
                )
            };
        }
    }
}

impl Drop for DpdkPacket {
    fn drop(&mut self) {
        // SAFETY: the mbuf is owned by self and freed once, here.
        unsafe { nexus_dpdk_mbuf_free(self.0.as_ptr()) };
    }
}

impl fmt::Debug for DpdkPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkPacket")
            .field("len", &self.bytes().1)
            .finish()
    }
}

/// Opens what `NicSpec::Dpdk { eal_args, rx_port, tx_port }` names: initialises EAL with
/// `eal_args` (or reuses it, see [`Eal::init`]) and opens the RX port and, when it is another
/// port, the TX port (`None` when both are one port: transmit on the RX port).
///
/// Call it from the data plane thread (see the module docs).
pub fn open_ports(
    eal_args: &[String],
    rx_port: u16,
    tx_port: u16,
) -> Result<(DpdkPort, Option<DpdkPort>), NicError> {
    let eal = Eal::init(eal_args)?;
    let rx = DpdkPort::open(eal, rx_port)?;
    let tx = if tx_port == rx_port {
        None
    } else {
        Some(DpdkPort::open(eal, tx_port)?)
    };
    Ok((rx, tx))
}
