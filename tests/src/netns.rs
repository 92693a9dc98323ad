//! Sites: network namespaces joined through a bridge, so a test can cut the links between real
//! `nexus` processes and heal them again.
//!
//! ```text
//!   site 0 (netns nxt<pid>-<seq>-s0)      bridge (netns nxt<pid>-<seq>-br)      site 1 (…-s1)
//!   lo, eth0 10.B.0.1/16  ◄── veth ──►   s0 ── br0 ── s1   ◄── veth ──►  eth0 10.B.1.1/16, lo
//! ```
//!
//! Each site is a namespace with its loopback up and one veth pair to the bridge namespace: `eth0`
//! (address `10.B.<site>.1/16`) on the site side, `s<site>` enslaved to the bridge `br0` on the
//! other. Every node of a site binds its API, gossip and QUIC sockets to the site's address (port
//! 0), so traffic between sites crosses the bridge and traffic inside a site stays on its
//! loopback. [`Sites::cut`] takes a site's bridge port down (the site keeps talking to itself and
//! loses every other site); [`Sites::partition`] moves ports to per-group bridges. Interface names
//! are local to their namespace (created directly there, never in the root namespace), so only the
//! namespace names carry the pid and a counter.
//!
//! **The root namespace is left alone**: no address, route or interface is added to it. The test
//! process reaches the nodes' APIs through an HTTP CONNECT proxy it runs on `127.0.0.1:0`
//! ([`Site::proxy`]); the proxy opens each tunnel from a thread that entered the target site's
//! namespace (`setns(2)` moves only the calling thread, and a socket stays in the namespace it was
//! created in), so the connection is made *inside* the site, to the site's own address. That is
//! why the test can still read a cut site's view: a cut separates sites from each other, never a
//! node from its observer. TLS runs end to end through the tunnel, so API URLs and certificates are
//! the real ones. Only HTTPS APIs (the default) can be reached this way.
//!
//! Processes run in a site with [`Site::command`] (`ip netns exec`, which execs, so the child's pid
//! is the program's). Dropping [`Sites`] stops the proxy and deletes every namespace (which
//! destroys the veth pairs and bridges with them), also when the test panics; namespaces left by
//! a test process that died without unwinding are deleted by the next [`Sites::create`].
//! Everything here needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and `ip` from iproute2.
//!
//! With the rest of the harness: declare the `Sites` before the `Fleet` (so nodes die before their
//! namespaces go), start with `Fleet::init_in(&sites.site(0), &[])` and add nodes with
//! `fleet.join_in(&sites.site(i), &token, &[])` (labelled `site-<i>`; `nexus join` runs in the
//! site too, so it crosses the bridge to the anchor); `NodeProc::run_in(site, dir)` restarts one
//! (`node.site` says where it ran). The `Fleet`'s client and `api_client_in` go through the proxy,
//! so `converge`, `statuses` and friends work unchanged, for cut sites too. [`Sites::heal`],
//! [`Sites::heal_all`] and [`Sites::partition`] return once the links carry traffic (and with the
//! sites' ARP caches flushed, so nothing waits out an ARP retry).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Prefix of every namespace name this module creates: `nxt<pid>-<seq>-<what>`.
const PREFIX: &str = "nxt";

/// Sites created by this process so far (for unique names).
static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// How long the proxy waits for a connection inside a site.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a healed link may take to carry traffic (the kernel needs up to about a second).
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// N sites joined through one bridge namespace. Dropping it removes every namespace it made.
pub struct Sites {
    bridge: String,
    sites: Vec<SiteNet>,
    /// Bridges made by [`Sites::partition`], besides `br0`.
    group_bridges: Mutex<usize>,
    proxy: Option<Proxy>,
}

/// One site's namespace and address.
#[derive(Clone, Debug)]
struct SiteNet {
    namespace: String,
    addr: IpAddr,
}

/// One site of a [`Sites`]: where a process runs and how the test process reaches it.
#[derive(Clone, Debug)]
pub struct Site {
    index: usize,
    net: SiteNet,
    proxy: SocketAddr,
    /// Every site address of the same [`Sites`] (the proxy reaches all of them).
    all: Arc<[IpAddr]>,
}

impl Sites {
    /// Creates `n` sites, each with its loopback up and linked to a shared bridge.
    pub fn create(n: usize) -> anyhow::Result<Sites> {
        if n == 0 || n > 250 {
            bail!("Sites::create({n}): a fleet of sites has 1 to 250 sites");
        }
        sweep_stale();
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let stem = format!("{PREFIX}{}-{seq}", std::process::id());
        // The addresses only exist inside our namespaces; a per-instance second octet only makes
        // logs of different instances tell apart.
        let base = 100 + (seq % 100) as u8;
        let mut sites = Sites {
            bridge: format!("{stem}-br"),
            sites: Vec::new(),
            group_bridges: Mutex::new(0),
            proxy: None,
        };
        // From here on, an error drops `sites`, which deletes what was made so far.
        ip(&["netns", "add", &sites.bridge]).context(
            "Sites need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces",
        )?;
        let br = sites.bridge.clone();
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let namespace = format!("{stem}-s{i}");
            ip(&["netns", "add", &namespace])?;
            let addr = IpAddr::V4(Ipv4Addr::new(10, base, i as u8, 1));
            sites.sites.push(SiteNet {
                namespace: namespace.clone(),
                addr,
            });
            let port = port_name(i);
            // Both ends are made inside their namespaces: no name ever exists in the root one.
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &namespace,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        }
        sites.proxy = Some(Proxy::start(sites.sites.clone())?);
        Ok(sites)
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// Always false: there is at least one site.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// Site `i`, to run processes in and reach them (panics if there is no such site).
    pub fn site(&self, i: usize) -> Site {
        let net = self.net(i).clone();
        Site {
            index: i,
            net,
            proxy: self.proxy.as_ref().expect("the proxy runs").addr,
            all: self.sites.iter().map(|s| s.addr).collect(),
        }
    }

    /// The address the nodes of site `i` bind.
    pub fn site_addr(&self, i: usize) -> IpAddr {
        self.net(i).addr
    }

    /// Name of site `i`'s network namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.net(i).namespace
    }

    /// A command that runs `program` inside site `i` (`ip netns exec <ns> <program>`).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.site(i).command(program)
    }

    /// Takes site `i`'s link to the bridge down: it can no longer reach any other site (nor they
    /// it), while its own nodes still reach each other.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        self.net(i);
        ip(&["-n", &self.bridge, "link", "set", &port_name(i), "down"])
    }

    /// Brings site `i`'s link to the bridge back up (undoes [`Sites::cut`]), and returns once it
    /// carries traffic.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        self.net(i);
        ip(&["-n", &self.bridge, "link", "set", &port_name(i), "up"])?;
        self.wait_carrying(i)?;
        self.forget_neighbours()
    }

    /// Splits the sites into `groups`: sites reach the sites of their own group only, and a site
    /// named in no group reaches no other site. Links stay as they are (a cut site stays cut).
    /// [`Sites::heal_all`] joins everything again.
    pub fn partition(&self, groups: &[&[usize]]) -> anyhow::Result<()> {
        let mut group_of = vec![None; self.sites.len()];
        for (g, group) in groups.iter().enumerate() {
            for &i in *group {
                match group_of.get_mut(i) {
                    None => bail!("partition {groups:?}: there is no site {i}"),
                    Some(Some(_)) => bail!("partition {groups:?}: site {i} is in two groups"),
                    Some(slot) => *slot = Some(g),
                }
            }
        }
        let mut made = self
            .group_bridges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *made < groups.len() {
            let name = format!("br{}", *made + 1);
            ip(&["-n", &self.bridge, "link", "add", &name, "type", "bridge"])?;
            ip(&["-n", &self.bridge, "link", "set", &name, "up"])?;
            *made += 1;
        }
        drop(made);
        for (i, group) in group_of.iter().enumerate() {
            let port = port_name(i);
            match group {
                Some(g) => ip(&[
                    "-n",
                    &self.bridge,
                    "link",
                    "set",
                    &port,
                    "master",
                    &format!("br{}", g + 1),
                ])?,
                None => ip(&["-n", &self.bridge, "link", "set", &port, "nomaster"])?,
            }
        }
        (0..self.sites.len()).try_for_each(|i| self.wait_carrying(i))?;
        self.forget_neighbours()
    }

    /// Every site on one bridge again, every link up: undoes [`Sites::partition`] and
    /// [`Sites::cut`].
    pub fn heal_all(&self) -> anyhow::Result<()> {
        for i in 0..self.sites.len() {
            let port = port_name(i);
            ip(&["-n", &self.bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &self.bridge, "link", "set", &port, "up"])?;
        }
        (0..self.sites.len()).try_for_each(|i| self.wait_carrying(i))?;
        self.forget_neighbours()
    }

    /// Adds a veth pair `a`–`b` inside site `i` (both ends up, no addresses), with `a` given
    /// the Ethernet address `a_mac`: a wire for a node's data plane and a test's traffic.
    pub fn add_veth(&self, i: usize, a: &str, b: &str, a_mac: &str) -> anyhow::Result<()> {
        let ns = &self.net(i).namespace;
        for args in [
            vec![
                "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b,
            ],
            vec!["-n", ns, "link", "set", a, "address", a_mac],
            vec!["-n", ns, "link", "set", a, "up"],
            vec!["-n", ns, "link", "set", b, "up"],
        ] {
            let status = Command::new("ip")
                .args(&args)
                .status()
                .context("running ip")?;
            anyhow::ensure!(status.success(), "ip {args:?} failed");
        }
        Ok(())
    }

    /// Runs `f` on a thread inside site `i`'s network namespace. Sockets `f` creates belong to
    /// the site, also after they are handed back.
    pub fn run_in<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        run_in_namespace(&self.net(i).namespace, f)
    }

    /// Whether a TCP connection from site `from` reaches a listener in site `to` (within 1 s).
    /// For checking the network itself before blaming a product.
    pub fn can_reach(&self, from: usize, to: usize) -> anyhow::Result<bool> {
        let addr = self.site_addr(to);
        let listener = self.run_in(to, move || TcpListener::bind((addr, 0)))??;
        let target = listener.local_addr()?;
        self.run_in(from, move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok()
        })
    }

    /// Waits until site `i`'s link, if not cut, carries traffic. A link brought up has no
    /// carrier until the kernel's link watcher runs (up to a second later, it is rate limited),
    /// and a bridge forwards through the port only from then on: without this wait, the first
    /// packets after a heal are dropped and ARP retries only after another second.
    fn wait_carrying(&self, i: usize) -> anyhow::Result<()> {
        let port = port_name(i);
        let namespace = &self.net(i).namespace;
        let started = Instant::now();
        loop {
            let bridge_side = link_state(&self.bridge, &port)?;
            if !bridge_side.admin_up {
                return Ok(()); // cut: nothing to wait for
            }
            let site_side = link_state(namespace, "eth0")?;
            if bridge_side.carrying() && site_side.carrying() {
                return Ok(());
            }
            if started.elapsed() > LINK_UP_TIMEOUT {
                bail!(
                    "site {i}'s link did not come up within {LINK_UP_TIMEOUT:?}: {port} in {} is \
                     {bridge_side:?}, eth0 in {namespace} is {site_side:?}",
                    self.bridge
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Flushes every site's neighbour (ARP) cache. Addresses that could not be resolved while a
    /// link was down stay "incomplete", then "failed", for up to 3 s, and packets to them wait for
    /// the next ARP retry (1 s apart); flushed, the first packet after a change resolves at once.
    fn forget_neighbours(&self) -> anyhow::Result<()> {
        for site in &self.sites {
            ip(&["-n", &site.namespace, "neigh", "flush", "all"])?;
        }
        Ok(())
    }

    fn net(&self, i: usize) -> &SiteNet {
        self.sites.get(i).unwrap_or_else(|| {
            panic!(
                "there is no site {i}: these sites are 0..{}",
                self.sites.len()
            )
        })
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        drop(self.proxy.take());
        // Deleting the bridge namespace destroys the veth pairs (and so every site's eth0).
        let names = self
            .sites
            .iter()
            .map(|s| s.namespace.as_str())
            .chain([self.bridge.as_str()]);
        for name in names {
            if let Err(err) = ip(&["netns", "delete", name])
                && !format!("{err:#}").contains("No such file")
            {
                eprintln!("warning: cleaning up sites: {err:#}");
            }
        }
    }
}

impl Site {
    /// This site's index in its [`Sites`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The address this site's nodes bind.
    pub fn addr(&self) -> IpAddr {
        self.net.addr
    }

    /// Name of this site's network namespace.
    pub fn namespace(&self) -> &str {
        &self.net.namespace
    }

    /// A command that runs `program` inside this site (`ip netns exec <ns> <program>`; `ip`
    /// execs the program, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.namespace])
            .arg(program);
        cmd
    }

    /// `nexus` flags binding the API, gossip and QUIC sockets to free ports of this site's
    /// address (the site version of [`crate::ANY_PORTS`]).
    pub fn any_ports(&self) -> [String; 6] {
        let any = format!("{}:0", self.net.addr);
        [
            "--api".into(),
            any.clone(),
            "--gossip".into(),
            any.clone(),
            "--quic".into(),
            any,
        ]
    }

    /// A proxy setting for `reqwest` clients of the test process: requests to any site of the
    /// same [`Sites`] tunnel through the proxy into that site; other requests go direct.
    pub fn proxy(&self) -> reqwest::Proxy {
        let proxy_url = format!("http://{}", self.proxy);
        let all = self.all.clone();
        reqwest::Proxy::custom(move |url| {
            let ip = url
                .host_str()?
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .ok()?;
            all.contains(&ip).then(|| proxy_url.clone())
        })
    }
}

/// `s<i>`: site `i`'s port on the bridge (interface names are local to the bridge namespace).
fn port_name(i: usize) -> String {
    format!("s{i}")
}

/// What `ip -d link show` says about one interface.
#[derive(Debug)]
struct LinkState {
    /// Set up by an administrator (`UP` among its flags).
    admin_up: bool,
    /// `operstate`: `UP` once it has a carrier and the kernel has noticed.
    operstate: String,
    /// Its bridge port state (`forwarding`, `disabled`, …), when it is a bridge port.
    port_state: Option<String>,
}

impl LinkState {
    fn carrying(&self) -> bool {
        self.admin_up
            && self.operstate == "UP"
            && self.port_state.as_deref().is_none_or(|s| s == "forwarding")
    }
}

fn link_state(namespace: &str, dev: &str) -> anyhow::Result<LinkState> {
    let out = ip_output(&["-n", namespace, "-d", "-j", "link", "show", "dev", dev])?;
    let links: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`ip -n {namespace} -d -j link show dev {dev}` said: {out}"))?;
    let link = &links[0];
    Ok(LinkState {
        admin_up: link["flags"]
            .as_array()
            .is_some_and(|flags| flags.iter().any(|f| f == "UP")),
        operstate: link["operstate"].as_str().unwrap_or_default().to_string(),
        port_state: link["linkinfo"]["info_slave_data"]["state"]
            .as_str()
            .map(str::to_string),
    })
}

/// Runs `ip <args>`; the error names the command and carries its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_output(args).map(drop)
}

/// Runs `ip <args>` and returns its stdout; the error names the command and carries its stderr.
fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip`: the sites harness needs iproute2 (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes namespaces left by test processes of this harness that are gone (killed without
/// unwinding, so their `Drop` never ran). Best effort.
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
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

/// Runs `f` on a new thread that first enters the network namespace `namespace`.
fn run_in_namespace<T: Send + 'static>(
    namespace: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{namespace}");
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    std::thread::spawn(move || -> anyhow::Result<T> {
        enter_netns(&file).with_context(|| format!("cannot enter {path}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread inside {namespace} panicked"))?
}

/// Moves the calling thread (only it) into the network namespace `file` refers to.
#[allow(unsafe_code)]
fn enter_netns(file: &std::fs::File) -> io::Result<()> {
    // SAFETY: setns(2) takes a file descriptor we own (open for the whole call) and a flag; it has
    // no memory-safety preconditions and changes only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An HTTP CONNECT proxy on `127.0.0.1:0` of the test process's namespace that opens each tunnel
/// from inside the site owning the target address. Plain threads, not tasks: it outlives the
/// runtime of any one test and needs a thread per dial anyway (to enter the namespace).
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(sites: Vec<SiteNet>) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("cannot bind the sites proxy on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sites: Arc<[SiteNet]> = sites.into();
        let acceptor = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("sites-proxy".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let sites = sites.clone();
                        std::thread::spawn(move || {
                            let _ = tunnel(conn, &sites);
                        });
                    }
                })?
        };
        Ok(Proxy {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the acceptor so it sees the flag; if that fails, leave it be rather than wait on it.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(acceptor) = self.acceptor.take()
            && woken
        {
            let _ = acceptor.join();
        }
    }
}

/// Serves one CONNECT request: dials the target inside its site, then copies bytes both ways.
fn tunnel(mut client: TcpStream, sites: &[SiteNet]) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = read_head(&mut client)?;
    let target = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("CONNECT "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|target| target.parse::<SocketAddr>().ok());
    let Some(target) = target else {
        return refuse(
            &mut client,
            "400 Bad Request",
            "only CONNECT ip:port is served",
        );
    };
    let Some(site) = sites.iter().find(|s| s.addr == target.ip()) else {
        return refuse(&mut client, "403 Forbidden", "not the address of a site");
    };
    let dialed = run_in_namespace(&site.namespace, move || {
        TcpStream::connect_timeout(&target, DIAL_TIMEOUT)
    });
    let upstream = match dialed {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(err)) => return refuse(&mut client, "502 Bad Gateway", &err.to_string()),
        Err(err) => return refuse(&mut client, "502 Bad Gateway", &format!("{err:#}")),
    };
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    client.set_read_timeout(None)?;
    let (mut up_read, mut client_write) = (upstream.try_clone()?, client.try_clone()?);
    let downstream = std::thread::spawn(move || {
        let _ = io::copy(&mut up_read, &mut client_write);
        let _ = client_write.shutdown(Shutdown::Write);
    });
    let (mut client_read, mut up_write) = (client, upstream);
    let _ = io::copy(&mut client_read, &mut up_write);
    let _ = up_write.shutdown(Shutdown::Write);
    let _ = downstream.join();
    Ok(())
}

/// Reads a request head up to its blank line, byte by byte so nothing after it is consumed.
fn read_head(client: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(io::Error::other("request head over 8 KiB"));
        }
        if client.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Answers a CONNECT request that will not be tunnelled, saying why.
fn refuse(client: &mut TcpStream, status: &str, why: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}",
        why.len()
    );
    client.write_all(response.as_bytes())
}
