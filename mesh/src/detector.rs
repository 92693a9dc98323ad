//! Fast failure detection, I/O-free: direct heartbeats to a few monitors, suspicion confirmed
//! by direct probes before anyone is told (as Lifeguard does for SWIM), and a verdict sent to
//! every member of the pool at once.
//!
//! Gossip stays slow and cheap (its cost grows with the pool, its speed with the interval);
//! liveness comes from here instead:
//!
//! - every node sorts the live members of each of its pools by node id into a ring and sends a
//!   heartbeat datagram every `interval` to the `monitors` nodes after it; it watches the
//!   `monitors` nodes before it;
//! - a watched node silent for `suspect_after` is probed directly (`probes` pings,
//!   `probe_gap` apart); any answer clears it, so a monitor whose view of the ring is out of
//!   date never accuses a live node;
//! - no answer: the monitor sends `down` to every member of the pool, and gateways pass a
//!   verdict on their site's members to the WAN pool;
//! - a node told it is down answers `alive` to everyone (a refutation); a node that keeps
//!   sending heartbeats to a monitor that declared it down is told again.
//!
//! With loss `p` per datagram, a live node is declared down only if its heartbeats for
//! `suspect_after` and every probe or answer are lost: about `p^(suspect_after/interval) ·
//! (2p)^probes` per window.

use std::collections::HashMap;
use std::time::Duration;

use nexus_ca::NodeId;
use serde::{Deserialize, Serialize};

/// Timing of the detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// Time between two heartbeats to each monitor.
    pub interval: Duration,
    /// Silence after which a watched node is probed.
    pub suspect_after: Duration,
    /// Monitors per node (successors in the ring).
    pub monitors: usize,
    /// Pings sent before a silent node is declared down.
    pub probes: usize,
    /// Time between two pings (and after the last one).
    pub probe_gap: Duration,
}

impl Default for DetectorConfig {
    fn default() -> DetectorConfig {
        DetectorConfig {
            interval: Duration::from_millis(500),
            suspect_after: Duration::from_millis(1200),
            monitors: 2,
            probes: 3,
            probe_gap: Duration::from_millis(100),
        }
    }
}

impl DetectorConfig {
    /// Checks that the timings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() || self.probe_gap.is_zero() {
            return Err("detector.interval and detector.probe_gap must be above zero".into());
        }
        if self.suspect_after < self.interval * 2 {
            return Err(format!(
                "detector.suspect_after ({:?}) must be at least two heartbeat intervals ({:?})",
                self.suspect_after,
                self.interval * 2
            ));
        }
        if self.monitors == 0 || self.probes == 0 {
            return Err("detector.monitors and detector.probes must be at least 1".into());
        }
        Ok(())
    }

    /// Longest time from a crash to its verdict: a heartbeat interval, the silence and the
    /// probes.
    pub fn worst_detection(&self) -> Duration {
        self.interval + self.suspect_after + self.probe_gap * self.probes as u32
    }
}

/// What a detector datagram says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// "I am alive."
    Heartbeat,
    /// "Are you alive?" with a nonce.
    Ping(u64),
    /// The answer to a ping.
    Ack(u64),
    /// `subject`'s incarnation `generation` is down.
    Down {
        /// The node declared down.
        subject: NodeId,
        /// Its incarnation.
        generation: u64,
    },
    /// `subject`'s incarnation `generation` is alive (a refutation).
    Alive {
        /// The node.
        subject: NodeId,
        /// Its incarnation.
        generation: u64,
    },
}

/// One detector datagram (the payload; on the wire it is sealed like gossip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Sender.
    pub sender: NodeId,
    /// Sender's incarnation.
    pub generation: u64,
    /// What it says.
    pub signal: Signal,
}

const MAGIC: &[u8; 4] = b"NXD1";

impl Datagram {
    /// Wire form: magic, kind, sender, generation, then the kind's fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(53);
        out.extend_from_slice(MAGIC);
        let (kind, tail): (u8, Vec<u8>) = match self.signal {
            Signal::Heartbeat => (1, Vec::new()),
            Signal::Ping(n) => (2, n.to_be_bytes().to_vec()),
            Signal::Ack(n) => (3, n.to_be_bytes().to_vec()),
            Signal::Down {
                subject,
                generation,
            } => (4, [&subject.0[..], &generation.to_be_bytes()].concat()),
            Signal::Alive {
                subject,
                generation,
            } => (5, [&subject.0[..], &generation.to_be_bytes()].concat()),
        };
        out.push(kind);
        out.extend_from_slice(&self.sender.0);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&tail);
        out
    }

    /// Parses the wire form; `None` for anything else (never a panic).
    pub fn decode(bytes: &[u8]) -> Option<Datagram> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let (&kind, rest) = rest.split_first()?;
        let sender = NodeId(rest.get(..16)?.try_into().ok()?);
        let generation = u64::from_be_bytes(rest.get(16..24)?.try_into().ok()?);
        let tail = &rest[24..];
        let u64_at = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
        let subject = |b: &[u8]| -> Option<(NodeId, u64)> {
            if b.len() != 24 {
                return None;
            }
            Some((NodeId(b[..16].try_into().ok()?), u64_at(&b[16..])?))
        };
        let signal = match kind {
            1 if tail.is_empty() => Signal::Heartbeat,
            2 => Signal::Ping(u64_at(tail)?),
            3 => Signal::Ack(u64_at(tail)?),
            4 => {
                let (subject, generation) = subject(tail)?;
                Signal::Down {
                    subject,
                    generation,
                }
            }
            5 => {
                let (subject, generation) = subject(tail)?;
                Signal::Alive {
                    subject,
                    generation,
                }
            }
            _ => return None,
        };
        Some(Datagram {
            sender,
            generation,
            signal,
        })
    }
}

/// What the detector asks its runtime to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `signal` to `to`.
    Send(NodeId, Signal),
    /// Send `signal` to every member of every pool `about` is in (and, on a gateway, for its
    /// site's members, to the WAN pool).
    Broadcast {
        /// The node the signal is about.
        about: NodeId,
        /// The signal.
        signal: Signal,
        /// Heard from the site and passed on by this gateway: to the WAN pool only.
        passed_on: bool,
    },
    /// `node` (incarnation `generation`) was heard from directly: a sign of life.
    Heard(NodeId, u64),
    /// Mark `node`'s incarnation `generation` down.
    Down(NodeId, u64),
    /// `node`'s incarnation `generation` refuted a verdict.
    Alive(NodeId, u64),
}

#[derive(Debug)]
struct Probing {
    nonce: u64,
    sent: usize,
    next_at: Duration,
}

/// The detector of one node.
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    self_id: NodeId,
    generation: u64,
    /// When each node was last heard from directly.
    heard: HashMap<NodeId, Duration>,
    /// Since when each node has been watched (a node never heard is silent from then).
    watching: HashMap<NodeId, Duration>,
    probing: HashMap<NodeId, Probing>,
    /// Verdicts known here, with when this node last told the subject.
    verdicts: HashMap<(NodeId, u64), Duration>,
    /// Verdicts and refutations already passed on, so each travels once per node.
    passed: HashMap<(NodeId, u64, bool), Duration>,
    next_heartbeat: Duration,
    nonce: u64,
    /// Whether this node passes verdicts on (a gateway, to the WAN pool).
    relay: bool,
    /// Verdicts (and refutations) this node declared or passed on, to send again (datagrams
    /// get lost): (when, signal, copies left, passed on).
    repeat: Vec<(Duration, Signal, usize, bool)>,
}

/// Copies of a verdict the declaring node sends, `probe_gap` apart, and that a gateway passes
/// on to the WAN pool: with loss `p` a member misses all of them with probability
/// `p^VERDICT_COPIES`.
pub const VERDICT_COPIES: usize = 3;

impl Detector {
    /// A detector for `self_id`'s incarnation `generation`.
    pub fn new(config: DetectorConfig, self_id: NodeId, generation: u64) -> Detector {
        Detector {
            config,
            self_id,
            generation,
            heard: HashMap::new(),
            watching: HashMap::new(),
            probing: HashMap::new(),
            verdicts: HashMap::new(),
            passed: HashMap::new(),
            next_heartbeat: Duration::ZERO,
            nonce: generation,
            relay: false,
            repeat: Vec::new(),
        }
    }

    /// Makes this detector pass the verdicts and refutations it receives on once (a gateway
    /// does, from its site to the WAN pool). Others only apply them: the declaring node has
    /// told the whole pool already.
    pub fn relaying(mut self, relay: bool) -> Detector {
        self.relay = relay;
        self
    }

    /// Sends `signal` (a verdict or refutation just broadcast) again `probe_gap` apart, until
    /// [`VERDICT_COPIES`] went out.
    fn repeat_later(&mut self, now: Duration, signal: Signal, passed_on: bool) {
        self.repeat.push((
            now + self.config.probe_gap,
            signal,
            VERDICT_COPIES - 1,
            passed_on,
        ));
    }

    /// Whether a repeated signal still says what this node knows: a refutation since cancels a
    /// verdict's copies, a new verdict a refutation's.
    fn still_holds(&self, signal: &Signal) -> bool {
        match *signal {
            Signal::Down {
                subject,
                generation,
            } => self.verdicts.contains_key(&(subject, generation)),
            Signal::Alive {
                subject,
                generation,
            } => !self.verdicts.contains_key(&(subject, generation)),
            _ => false,
        }
    }

    /// How long ago `node` was last heard from directly, if ever.
    pub fn heard_ago(&self, node: &NodeId, now: Duration) -> Option<Duration> {
        self.heard.get(node).map(|at| now.saturating_sub(*at))
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// A datagram from this node.
    pub fn datagram(&self, signal: Signal) -> Datagram {
        Datagram {
            sender: self.self_id,
            generation: self.generation,
            signal,
        }
    }

    /// The `monitors` nodes after this one in `ring` (sorted node ids, this node included):
    /// whom it sends heartbeats to.
    pub fn monitors_of_self(&self, ring: &[NodeId]) -> Vec<NodeId> {
        neighbours(ring, self.self_id, self.config.monitors, true)
    }

    /// The `monitors` nodes before this one in `ring`: whom it watches.
    pub fn watched(&self, ring: &[NodeId]) -> Vec<NodeId> {
        neighbours(ring, self.self_id, self.config.monitors, false)
    }

    /// Runs the clock: heartbeats when due, probes of silent watched nodes, verdicts. `rings`
    /// are the sorted live members of each pool this node is in; `generation_of` gives the
    /// incarnation this node knows of a member. Call it every `probe_gap` or more often.
    pub fn poll(
        &mut self,
        now: Duration,
        rings: &[Vec<NodeId>],
        generation_of: impl Fn(&NodeId) -> Option<u64>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.interval;
            let mut sent = std::collections::BTreeSet::new();
            for ring in rings {
                for monitor in self.monitors_of_self(ring) {
                    if sent.insert(monitor) {
                        actions.push(Action::Send(monitor, Signal::Heartbeat));
                    }
                }
            }
        }
        let watched: std::collections::BTreeSet<NodeId> =
            rings.iter().flat_map(|ring| self.watched(ring)).collect();
        self.watching.retain(|node, _| watched.contains(node));
        for node in &watched {
            let since = *self.watching.entry(*node).or_insert(now);
            let last = self.heard.get(node).copied().unwrap_or(since).max(since);
            let Some(generation) = generation_of(node) else {
                continue;
            };
            if self.verdicts.contains_key(&(*node, generation)) {
                continue;
            }
            if now.saturating_sub(last) >= self.config.suspect_after
                && !self.probing.contains_key(node)
            {
                self.nonce = self.nonce.wrapping_add(1);
                self.probing.insert(
                    *node,
                    Probing {
                        nonce: self.nonce,
                        sent: 0,
                        next_at: now,
                    },
                );
            }
        }
        let mut declared = Vec::new();
        for (node, probing) in &mut self.probing {
            if now < probing.next_at {
                continue;
            }
            if probing.sent < self.config.probes {
                probing.sent += 1;
                probing.next_at = now + self.config.probe_gap;
                actions.push(Action::Send(*node, Signal::Ping(probing.nonce)));
            } else {
                declared.push(*node);
            }
        }
        for node in declared {
            self.probing.remove(&node);
            if let Some(generation) = generation_of(&node) {
                self.verdicts.insert((node, generation), now);
                self.passed.insert((node, generation, false), now);
                actions.push(Action::Down(node, generation));
                actions.push(Action::Broadcast {
                    about: node,
                    signal: Signal::Down {
                        subject: node,
                        generation,
                    },
                    passed_on: false,
                });
                self.repeat_later(
                    now,
                    Signal::Down {
                        subject: node,
                        generation,
                    },
                    false,
                );
            }
        }
        let gap = self.config.probe_gap;
        let mut repeat = std::mem::take(&mut self.repeat);
        for (at, signal, left, passed_on) in &mut repeat {
            if *at <= now && *left > 0 && self.still_holds(signal) {
                let about = match *signal {
                    Signal::Down { subject, .. } | Signal::Alive { subject, .. } => subject,
                    _ => continue,
                };
                actions.push(Action::Broadcast {
                    about,
                    signal: *signal,
                    passed_on: *passed_on,
                });
                *left -= 1;
                *at = now + gap;
            }
        }
        repeat.retain(|(_, signal, left, _)| *left > 0 && self.still_holds(signal));
        self.repeat = repeat;
        // Forget old bookkeeping (a verdict stays known long enough to re-tell a live node).
        let horizon = self.config.suspect_after * 40;
        self.verdicts
            .retain(|_, at| now.saturating_sub(*at) < horizon);
        self.passed
            .retain(|_, at| now.saturating_sub(*at) < horizon);
        actions
    }

    /// Takes one datagram.
    pub fn receive(&mut self, now: Duration, datagram: Datagram) -> Vec<Action> {
        let mut actions = Vec::new();
        let sender = datagram.sender;
        if sender == self.self_id {
            return actions;
        }
        self.heard.insert(sender, now);
        self.probing.remove(&sender);
        actions.push(Action::Heard(sender, datagram.generation));
        // A node declared down that is still talking is told, so it refutes.
        if let Some(told) = self.verdicts.get_mut(&(sender, datagram.generation))
            && now.saturating_sub(*told) >= self.config.interval * 2
        {
            *told = now;
            actions.push(Action::Send(
                sender,
                Signal::Down {
                    subject: sender,
                    generation: datagram.generation,
                },
            ));
        }
        match datagram.signal {
            Signal::Heartbeat | Signal::Ack(_) => {}
            Signal::Ping(nonce) => actions.push(Action::Send(sender, Signal::Ack(nonce))),
            Signal::Down {
                subject,
                generation,
            } => {
                if subject == self.self_id {
                    if generation == self.generation
                        && self
                            .passed
                            .insert((subject, generation, true), now)
                            .is_none()
                    {
                        let refutation = Signal::Alive {
                            subject,
                            generation,
                        };
                        actions.push(Action::Broadcast {
                            about: subject,
                            signal: refutation,
                            passed_on: false,
                        });
                        self.repeat_later(now, refutation, false);
                    } else if generation == self.generation {
                        // Told again (our refutation was lost somewhere): answer the teller.
                        actions.push(Action::Send(
                            sender,
                            Signal::Alive {
                                subject,
                                generation,
                            },
                        ));
                    }
                    return actions;
                }
                self.verdicts.entry((subject, generation)).or_insert(now);
                self.probing.remove(&subject);
                actions.push(Action::Down(subject, generation));
                if self.relay
                    && self
                        .passed
                        .insert((subject, generation, false), now)
                        .is_none()
                {
                    actions.push(Action::Broadcast {
                        about: subject,
                        signal: datagram.signal,
                        passed_on: true,
                    });
                    self.repeat_later(now, datagram.signal, true);
                }
            }
            Signal::Alive {
                subject,
                generation,
            } => {
                self.verdicts.remove(&(subject, generation));
                self.heard.insert(subject, now);
                actions.push(Action::Alive(subject, generation));
                if self.relay
                    && self
                        .passed
                        .insert((subject, generation, true), now)
                        .is_none()
                {
                    actions.push(Action::Broadcast {
                        about: subject,
                        signal: datagram.signal,
                        passed_on: true,
                    });
                    self.repeat_later(now, datagram.signal, true);
                }
            }
        }
        actions
    }
}

/// `k` neighbours of `me` in the sorted `ring`, after it (`forward`) or before it.
fn neighbours(ring: &[NodeId], me: NodeId, k: usize, forward: bool) -> Vec<NodeId> {
    let Ok(at) = ring.binary_search(&me) else {
        return Vec::new();
    };
    let n = ring.len();
    (1..n)
        .take(k.min(n.saturating_sub(1)))
        .map(|step| {
            if forward {
                ring[(at + step) % n]
            } else {
                ring[(at + n - step) % n]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn datagrams_roundtrip_and_junk_is_refused() {
        for signal in [
            Signal::Heartbeat,
            Signal::Ping(7),
            Signal::Ack(9),
            Signal::Down {
                subject: id(3),
                generation: 11,
            },
            Signal::Alive {
                subject: id(4),
                generation: 12,
            },
        ] {
            let d = Datagram {
                sender: id(1),
                generation: 5,
                signal,
            };
            assert_eq!(Datagram::decode(&d.encode()), Some(d));
        }
        assert_eq!(Datagram::decode(b""), None);
        assert_eq!(Datagram::decode(b"NXD1\x09"), None);
        let mut truncated = Datagram {
            sender: id(1),
            generation: 5,
            signal: Signal::Ping(1),
        }
        .encode();
        truncated.pop();
        assert_eq!(Datagram::decode(&truncated), None);
    }

    #[test]
    fn rings_pick_successors_to_tell_and_predecessors_to_watch() {
        let ring = vec![id(1), id(2), id(3), id(4)];
        let d = Detector::new(DetectorConfig::default(), id(4), 1);
        assert_eq!(d.monitors_of_self(&ring), vec![id(1), id(2)]);
        assert_eq!(d.watched(&ring), vec![id(3), id(2)]);
        let alone = Detector::new(DetectorConfig::default(), id(1), 1);
        assert!(alone.monitors_of_self(&[id(1)]).is_empty());
        assert_eq!(alone.monitors_of_self(&[id(1), id(2)]), vec![id(2)]);
    }

    #[test]
    fn silence_leads_to_probes_then_a_verdict_and_an_answer_clears_it() {
        let config = DetectorConfig::default();
        let ring = vec![id(1), id(2), id(3)];
        let generation = |_: &NodeId| Some(1);
        // Node 2 watches node 1 (and node 3).
        let mut d = Detector::new(config.clone(), id(2), 1);
        let first = d.poll(ms(0), std::slice::from_ref(&ring), generation);
        assert!(first.contains(&Action::Send(id(3), Signal::Heartbeat)));
        d.receive(
            ms(10),
            Datagram {
                sender: id(1),
                generation: 1,
                signal: Signal::Heartbeat,
            },
        );
        d.receive(
            ms(10),
            Datagram {
                sender: id(3),
                generation: 1,
                signal: Signal::Heartbeat,
            },
        );
        // Node 3 keeps talking, node 1 goes silent.
        let mut t = 10;
        let mut pings = 0;
        let mut verdict = None;
        while t < 5000 && verdict.is_none() {
            t += 50;
            if (t - 10) % 400 == 0 {
                d.receive(
                    ms(t),
                    Datagram {
                        sender: id(3),
                        generation: 1,
                        signal: Signal::Heartbeat,
                    },
                );
            }
            for a in d.poll(ms(t), std::slice::from_ref(&ring), generation) {
                match a {
                    Action::Send(to, Signal::Ping(_)) => {
                        assert_eq!(to, id(1), "only the silent node is probed");
                        pings += 1;
                    }
                    Action::Down(node, 1) => verdict = Some((node, t)),
                    _ => {}
                }
            }
        }
        let (node, at) = verdict.expect("a verdict");
        assert_eq!(node, id(1));
        assert_eq!(pings, config.probes);
        assert!(ms(at) <= ms(10) + config.worst_detection(), "{at} ms");

        // A live node answering one probe is never declared.
        let mut d = Detector::new(config.clone(), id(2), 1);
        d.poll(ms(0), std::slice::from_ref(&ring), generation);
        for a in d.poll(ms(1600), std::slice::from_ref(&ring), generation) {
            if let Action::Send(to, Signal::Ping(nonce)) = a {
                d.receive(
                    ms(1650),
                    Datagram {
                        sender: to,
                        generation: 1,
                        signal: Signal::Ack(nonce),
                    },
                );
            }
        }
        for t in (1700..2400).step_by(50) {
            let actions = d.poll(ms(t), std::slice::from_ref(&ring), generation);
            assert!(
                !actions.iter().any(|a| matches!(a, Action::Down(..))),
                "{actions:?}"
            );
        }
    }

    #[test]
    fn a_node_told_it_is_down_refutes_once_and_verdicts_spread_once() {
        let mut d = Detector::new(DetectorConfig::default(), id(5), 9).relaying(true);
        let down_me = Datagram {
            sender: id(1),
            generation: 1,
            signal: Signal::Down {
                subject: id(5),
                generation: 9,
            },
        };
        let actions = d.receive(ms(0), down_me);
        assert!(actions.contains(&Action::Broadcast {
            about: id(5),
            signal: Signal::Alive {
                subject: id(5),
                generation: 9
            },
            passed_on: false,
        }));
        let again = d.receive(ms(100), down_me);
        assert!(again.contains(&Action::Send(
            id(1),
            Signal::Alive {
                subject: id(5),
                generation: 9
            }
        )));
        // An old incarnation's verdict is not ours to refute.
        let old = Datagram {
            signal: Signal::Down {
                subject: id(5),
                generation: 8,
            },
            ..down_me
        };
        assert!(
            !d.receive(ms(200), old)
                .iter()
                .any(|a| matches!(a, Action::Broadcast { .. }))
        );

        let down_other = Datagram {
            sender: id(1),
            generation: 1,
            signal: Signal::Down {
                subject: id(7),
                generation: 2,
            },
        };
        let first = d.receive(ms(300), down_other);
        assert!(first.contains(&Action::Down(id(7), 2)));
        assert!(first.iter().any(|a| matches!(a, Action::Broadcast { .. })));
        let second = d.receive(
            ms(301),
            Datagram {
                sender: id(2),
                ..down_other
            },
        );
        assert!(!second.iter().any(|a| matches!(a, Action::Broadcast { .. })));
        // A node that is not a gateway applies verdicts and does not pass them on.
        let mut plain = Detector::new(DetectorConfig::default(), id(6), 1);
        let applied = plain.receive(ms(0), down_other);
        assert!(applied.contains(&Action::Down(id(7), 2)));
        assert!(
            !applied
                .iter()
                .any(|a| matches!(a, Action::Broadcast { .. }))
        );
        // The declared node is still talking: it is told (so it refutes).
        let told = d.receive(
            ms(2000),
            Datagram {
                sender: id(7),
                generation: 2,
                signal: Signal::Heartbeat,
            },
        );
        assert!(told.contains(&Action::Send(
            id(7),
            Signal::Down {
                subject: id(7),
                generation: 2
            }
        )));
    }

    /// Copies of `signal` a poll at `at` sends, and whether they are passed on.
    fn copies(actions: &[Action], signal: Signal) -> Vec<bool> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Broadcast {
                    signal: s,
                    passed_on,
                    ..
                } if *s == signal => Some(*passed_on),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_gateway_passes_a_verdict_on_in_copies_until_it_is_refuted() {
        let config = DetectorConfig::default();
        let gap = config.probe_gap;
        let mut gateway = Detector::new(config, id(5), 9).relaying(true);
        let down = Signal::Down {
            subject: id(7),
            generation: 2,
        };
        let heard = |signal| Datagram {
            sender: id(1),
            generation: 1,
            signal,
        };
        let first = gateway.receive(ms(0), heard(down));
        assert_eq!(copies(&first, down), vec![true]);
        // One datagram to each WAN member is lost with the link's loss rate: the gateway sends
        // the rest of VERDICT_COPIES, probe_gap apart, all marked as passed on.
        let mut sent = 1;
        let mut at = Duration::ZERO;
        for _ in 0..10 {
            at += gap;
            sent += copies(&gateway.poll(at, &[], |_| None), down).len();
        }
        assert_eq!(sent, VERDICT_COPIES);

        // A refutation heard before the copies are out cancels them, and is passed on in
        // copies of its own.
        let mut gateway = Detector::new(DetectorConfig::default(), id(5), 9).relaying(true);
        gateway.receive(ms(0), heard(down));
        let alive = Signal::Alive {
            subject: id(7),
            generation: 2,
        };
        let refuted = gateway.receive(ms(1), heard(alive));
        assert_eq!(copies(&refuted, alive), vec![true]);
        let (mut downs, mut alives) = (0, 1);
        let mut at = Duration::ZERO;
        for _ in 0..10 {
            at += gap;
            let actions = gateway.poll(at, &[], |_| None);
            downs += copies(&actions, down).len();
            alives += copies(&actions, alive).len();
        }
        assert_eq!((downs, alives), (0, VERDICT_COPIES));
    }
}
