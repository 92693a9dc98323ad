//! Route policies compiled for the data plane.
//!
//! A [`Classifier`] answers "which policy decides this frame?" for the four things a policy can
//! match on: the source node, the destination's capabilities, the stream mode and the message
//! type. Rules are numbered in decision order (priority, then scope, then id) and the classifier
//! keeps, for every value a rule names, the set of rules that accept that value, as a bitset
//! (rules that do not constrain a field accept every value):
//!
//! - stream mode: four bitsets, one per mode;
//! - message type: a 65,536-entry table of indices into the distinct bitsets;
//! - source node: a hash map from the node ids the rules name, plus one bitset for any other node;
//! - destination: a hash map from each known node to the rules whose `dest_capabilities` it has,
//!   plus one bitset for unknown destinations (rules without a capability constraint).
//!
//! Deciding a frame is four lookups and an AND of four bitsets word by word, stopping at the first
//! non-zero word: its lowest set bit is the winning rule. Identical bitsets are stored once, so
//! memory grows with the number of *distinct* match sets.
//!
//! A new classifier is built off the packet path and published through [`PolicyHandle`]
//! (`arc-swap`): the engine loads it at the start of each burst, so every frame is decided by
//! exactly one classifier and traffic never pauses for a swap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;
use nexus_crdt::{ActionType, RoutePolicy, SourceTenant};

use crate::frame::{Header, Mode};

/// Where a policy comes from; at equal priority fleet policies decide before site policies, and
/// site policies before tenant policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// A fleet-wide policy (fleet document).
    Fleet,
    /// A site-scoped policy of the node's tenant and site.
    Site,
    /// A tenant-wide policy.
    Tenant,
}

impl Scope {
    /// Label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Fleet => "fleet",
            Scope::Site => "site",
            Scope::Tenant => "tenant",
        }
    }
}

/// A node the data plane can forward to, with its capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownNode {
    /// Node id.
    pub id: [u8; 16],
    /// Capabilities (from its certificate).
    pub capabilities: Vec<String>,
}

/// Everything a classifier is compiled from.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    /// The policies that apply to this node, with their scope. Disabled ones are skipped.
    pub policies: Vec<(Scope, RoutePolicy)>,
    /// Tenant and site policy ids this node's overrides switch off (an override cannot switch
    /// off a fleet policy, whatever its id).
    pub disabled: HashSet<String>,
    /// Nodes frames may be forwarded to (the forwarding table), with their capabilities.
    pub nodes: Vec<KnownNode>,
    /// The nodes of this node's tenant: `source_tenant: own` matches frames from these,
    /// `other` frames from any other source.
    pub own_tenant: HashSet<[u8; 16]>,
    /// Configuration version(s) this set was built from, for logs and `/v1` status.
    pub version: String,
}

impl PolicySet {
    /// Whether the node's overrides switch the policy `id` of `scope` off.
    pub fn switched_off(&self, scope: Scope, id: &str) -> bool {
        scope != Scope::Fleet && self.disabled.contains(id)
    }
}

/// What a rule does, compiled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Let the frame through.
    Allow,
    /// Drop the frame.
    Deny,
    /// At most `per_second` frames per second per source node; bursts of up to `per_second`.
    RateLimit {
        /// Frames per second.
        per_second: u64,
        /// Nanoseconds between frames at the limit (GCRA emission interval).
        interval_ns: u64,
        /// Burst tolerance, nanoseconds.
        tolerance_ns: u64,
    },
    /// Rewrite the destination node.
    Redirect([u8; 16]),
}

/// What a rule does to a frame, packed for the per-frame path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// The action.
    pub action: Action,
    /// [`Rule::uid`].
    pub uid: u64,
    /// Whether the rule carries a weight override.
    pub weighted: bool,
}

/// A classification: the deciding rule, if any, and whether the destination is in the
/// forwarding table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Index of the deciding rule; `None`: no rule matches (allowed).
    pub rule: Option<u32>,
    /// Whether the frame's destination is a known node.
    pub dst_known: bool,
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Policy id.
    pub id: String,
    /// Where it comes from.
    pub scope: Scope,
    /// Its priority.
    pub priority: u32,
    /// Stable across recompiles while the policy's id, scope and limit stay the same: keys its
    /// rate-limit state so a swap does not reset the buckets.
    pub uid: u64,
    /// The action.
    pub action: Action,
    /// Scoring-weight overrides handed to the router with the frames this rule passes.
    pub weights: Option<Arc<BTreeMap<String, f64>>>,
}

/// A compiled, immutable route-policy classifier plus the forwarding table.
pub struct Classifier {
    rules: Vec<Rule>,
    /// Per rule, what the engine needs on every frame, packed apart from the rule's id and
    /// weights so a decision touches one small entry.
    verdicts: Vec<Verdict>,
    words: usize,
    /// All bitsets, `words` u64s each.
    arena: Vec<u64>,
    mode: [u32; 4],
    msg: Box<[u32]>,
    src: HashMap<[u8; 16], u32, RandomState>,
    src_other: u32,
    /// Every known destination (the forwarding table) → its bitset.
    dst: HashMap<[u8; 16], u32, RandomState>,
    dst_other: u32,
    version: String,
    generation: u64,
    built_at: SystemTime,
    skipped: usize,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("rules", &self.rules.len())
            .field("routes", &self.dst.len())
            .field("bitsets", &(self.arena.len() / self.words.max(1)))
            .field("version", &self.version)
            .field("generation", &self.generation)
            .finish()
    }
}

struct Arena {
    words: usize,
    data: Vec<u64>,
    index: HashMap<Vec<u64>, u32>,
}

impl Arena {
    fn intern(&mut self, set: Vec<u64>) -> u32 {
        debug_assert_eq!(set.len(), self.words);
        if let Some(&i) = self.index.get(&set) {
            return i;
        }
        let i = (self.data.len() / self.words) as u32;
        self.data.extend_from_slice(&set);
        self.index.insert(set, i);
        i
    }
}

fn set_bit(set: &mut [u64], i: usize) {
    set[i / 64] |= 1 << (i % 64);
}

fn uid(scope: Scope, id: &str, per_second: u64) -> u64 {
    // FNV-1a: stable across processes and builds (rate-limit state is keyed by it).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in [scope as u8]
        .iter()
        .chain(id.as_bytes())
        .chain(&per_second.to_le_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The decision order of policies: priority, then scope, then id.
pub fn decision_order(a: &(Scope, RoutePolicy), b: &(Scope, RoutePolicy)) -> std::cmp::Ordering {
    (a.1.priority, a.0, &a.1.id).cmp(&(b.1.priority, b.0, &b.1.id))
}

impl Classifier {
    /// Compiles `set`. Policies that are disabled, switched off by an override, or whose action
    /// lacks its parameter (a `redirect` without a target, a `ratelimit` without a rate — the
    /// validator quarantines those first) are left out and counted in [`Classifier::skipped`].
    pub fn compile(set: &PolicySet) -> Classifier {
        let mut active: Vec<&(Scope, RoutePolicy)> = Vec::new();
        let mut skipped = 0;
        for entry in &set.policies {
            let (scope, p) = entry;
            let usable = match p.action.kind {
                ActionType::Redirect => p.action.redirect_node_id.is_some(),
                ActionType::Ratelimit => p.action.rate_limit.is_some_and(|r| r > 0),
                ActionType::Allow | ActionType::Deny => true,
            };
            if !p.enabled || set.switched_off(*scope, &p.id) {
                continue;
            }
            if !usable {
                skipped += 1;
                continue;
            }
            active.push(entry);
        }
        active.sort_by(|a, b| decision_order(a, b));

        let n = active.len();
        let words = n.div_ceil(64).max(1);
        let mut arena = Arena {
            words,
            data: Vec::new(),
            index: HashMap::new(),
        };
        let empty = vec![0u64; words];

        // Stream modes.
        let mut modes = [empty.clone(), empty.clone(), empty.clone(), empty.clone()];
        for (i, (_, p)) in active.iter().enumerate() {
            for m in Mode::ALL {
                if p.matches.stream_modes.is_empty()
                    || p.matches.stream_modes.iter().any(|s| Mode::from(*s) == m)
                {
                    set_bit(&mut modes[m as usize], i);
                }
            }
        }
        let mode = modes.map(|s| arena.intern(s));

        // Message types: wildcard rules plus, per named value, the rules naming it.
        let mut msg_any = empty.clone();
        let mut msg_named: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
        for (i, (_, p)) in active.iter().enumerate() {
            if p.matches.message_types.is_empty() {
                set_bit(&mut msg_any, i);
            }
        }
        for (i, (_, p)) in active.iter().enumerate() {
            for t in &p.matches.message_types {
                set_bit(msg_named.entry(*t).or_insert_with(|| msg_any.clone()), i);
            }
        }
        let msg_other = arena.intern(msg_any);
        let mut msg = vec![msg_other; 1 << 16].into_boxed_slice();
        for (t, s) in msg_named {
            msg[usize::from(t)] = arena.intern(s);
        }

        // Source nodes: a rule matches a source when its list is empty or names it, and its
        // `source_tenant` (if any) agrees with whether the source is of this node's tenant.
        let tenant_ok = |p: &RoutePolicy, own: bool| match p.matches.source_tenant {
            None => true,
            Some(SourceTenant::Own) => own,
            Some(SourceTenant::Other) => !own,
        };
        let mut src_any = empty.clone();
        let mut src_own = empty.clone();
        for (i, (_, p)) in active.iter().enumerate() {
            if p.matches.source_node_ids.is_empty() {
                if tenant_ok(p, false) {
                    set_bit(&mut src_any, i);
                }
                if tenant_ok(p, true) {
                    set_bit(&mut src_own, i);
                }
            }
        }
        let mut src_named: HashMap<[u8; 16], Vec<u64>> = HashMap::new();
        for (i, (_, p)) in active.iter().enumerate() {
            for id in &p.matches.source_node_ids {
                let own = set.own_tenant.contains(&id.0);
                if tenant_ok(p, own) {
                    let base = if own { &src_own } else { &src_any };
                    set_bit(src_named.entry(id.0).or_insert_with(|| base.clone()), i);
                }
            }
        }
        let src_other = arena.intern(src_any.clone());
        let own_any = arena.intern(src_own);
        let mut src = HashMap::with_capacity_and_hasher(
            src_named.len() + set.own_tenant.len(),
            RandomState::default(),
        );
        for id in &set.own_tenant {
            src.insert(*id, own_any);
        }
        for (id, s) in src_named {
            src.insert(id, arena.intern(s));
        }

        // Destinations: a known node gets the rules whose required capabilities it has.
        let mut dst_any = empty.clone();
        for (i, (_, p)) in active.iter().enumerate() {
            if p.matches.dest_capabilities.is_empty() {
                set_bit(&mut dst_any, i);
            }
        }
        let constrained: Vec<(usize, &Vec<String>)> = active
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| !p.matches.dest_capabilities.is_empty())
            .map(|(i, (_, p))| (i, &p.matches.dest_capabilities))
            .collect();
        let dst_other = arena.intern(dst_any.clone());
        let mut dst = HashMap::with_capacity_and_hasher(set.nodes.len(), RandomState::default());
        let mut by_caps: HashMap<Vec<&str>, u32> = HashMap::new();
        for node in &set.nodes {
            let mut caps: Vec<&str> = node.capabilities.iter().map(String::as_str).collect();
            caps.sort_unstable();
            caps.dedup();
            let idx = match by_caps.get(&caps) {
                Some(&i) => i,
                None => {
                    let mut s = dst_any.clone();
                    for (i, need) in &constrained {
                        if need.iter().all(|c| caps.binary_search(&c.as_str()).is_ok()) {
                            set_bit(&mut s, *i);
                        }
                    }
                    let i = arena.intern(s);
                    by_caps.insert(caps, i);
                    i
                }
            };
            dst.insert(node.id, idx);
        }

        let rules: Vec<Rule> = active
            .iter()
            .map(|(scope, p)| {
                let per_second = p.action.rate_limit.unwrap_or(0);
                let action = match p.action.kind {
                    ActionType::Allow => Action::Allow,
                    ActionType::Deny => Action::Deny,
                    ActionType::Ratelimit => {
                        let interval_ns = (1_000_000_000 / per_second).max(1);
                        Action::RateLimit {
                            per_second,
                            interval_ns,
                            tolerance_ns: interval_ns.saturating_mul(per_second.saturating_sub(1)),
                        }
                    }
                    ActionType::Redirect => Action::Redirect(
                        p.action.redirect_node_id.map(|id| id.0).unwrap_or_default(),
                    ),
                };
                Rule {
                    id: p.id.clone(),
                    scope: *scope,
                    priority: p.priority,
                    uid: uid(*scope, &p.id, per_second),
                    action,
                    weights: (!p.action.weight_override.is_empty())
                        .then(|| Arc::new(p.action.weight_override.clone())),
                }
            })
            .collect();

        let verdicts = rules
            .iter()
            .map(|r| Verdict {
                action: r.action,
                uid: r.uid,
                weighted: r.weights.is_some(),
            })
            .collect();
        Classifier {
            rules,
            verdicts,
            words,
            arena: arena.data,
            mode,
            msg,
            src,
            src_other,
            dst,
            dst_other,
            version: set.version.clone(),
            generation: 0,
            built_at: SystemTime::now(),
            skipped,
        }
    }

    /// An empty classifier: no rules, no routes.
    pub fn empty() -> Classifier {
        Classifier::compile(&PolicySet::default())
    }

    #[inline(always)]
    fn bits(&self, idx: u32) -> &[u64] {
        let at = idx as usize * self.words;
        &self.arena[at..at + self.words]
    }

    /// The rule that decides a frame with this header (`None` when no rule matches: the frame
    /// is then allowed), and whether its destination is in the forwarding table.
    #[inline]
    pub fn decide(&self, h: &Header) -> Decision {
        let known = self.dst.get(&h.dst);
        let m = self.bits(self.mode[h.mode as usize]);
        let t = self.bits(self.msg[usize::from(h.msg_type)]);
        let s = self.bits(*self.src.get(&h.src).unwrap_or(&self.src_other));
        let d = self.bits(*known.unwrap_or(&self.dst_other));
        let mut rule = None;
        for w in 0..self.words {
            let x = m[w] & t[w] & s[w] & d[w];
            if x != 0 {
                rule = Some((w * 64) as u32 + x.trailing_zeros());
                break;
            }
        }
        Decision {
            rule,
            dst_known: known.is_some(),
        }
    }

    /// The index of the rule that decides a frame with this header, or `None` when no rule
    /// matches.
    #[inline]
    pub fn classify(&self, h: &Header) -> Option<usize> {
        self.decide(h).rule.map(|r| r as usize)
    }

    /// What rule `i` does.
    #[inline(always)]
    pub fn verdict(&self, i: usize) -> &Verdict {
        &self.verdicts[i]
    }

    /// Rule `i`.
    #[inline(always)]
    pub fn rule(&self, i: usize) -> &Rule {
        &self.rules[i]
    }

    /// The rules in decision order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether frames may be forwarded to `dst`.
    #[inline(always)]
    pub fn has_route(&self, dst: &[u8; 16]) -> bool {
        self.dst.contains_key(dst)
    }

    /// Number of destinations in the forwarding table.
    pub fn route_count(&self) -> usize {
        self.dst.len()
    }

    /// Policies left out because their action lacked its parameter.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The configuration version this was compiled from.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Publication number (1 for the first published classifier, then +1 per swap).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When it was compiled.
    pub fn built_at(&self) -> SystemTime {
        self.built_at
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.arena.len() * 8
            + self.msg.len() * 4
            + (self.src.len() + self.dst.len()) * 24
            + self.rules.len() * (std::mem::size_of::<Rule>() + std::mem::size_of::<Verdict>())
    }
}

/// Where the engine finds the current classifier; swapped atomically by the control plane.
pub struct PolicyHandle {
    current: ArcSwap<Classifier>,
}

impl Default for PolicyHandle {
    fn default() -> Self {
        PolicyHandle::new(Classifier::empty())
    }
}

impl PolicyHandle {
    /// A handle publishing `first` (generation 1).
    pub fn new(mut first: Classifier) -> PolicyHandle {
        first.generation = 1;
        PolicyHandle {
            current: ArcSwap::from_pointee(first),
        }
    }

    /// Publishes `next`; frames of the engine's next burst are decided by it. Returns its
    /// generation.
    pub fn publish(&self, mut next: Classifier) -> u64 {
        let generation = self.current.load().generation + 1;
        next.generation = generation;
        self.current.store(Arc::new(next));
        generation
    }

    /// The current classifier.
    #[inline]
    pub fn load(&self) -> Arc<Classifier> {
        self.current.load_full()
    }
}

/// A slow, obviously correct matcher: the reference the classifier is tested against.
pub mod reference {
    use super::*;

    /// Whether `p` matches a frame `h` whose destination has `dst_caps` (`None`: unknown node)
    /// and whose source is (`own_src`) or is not of this node's tenant.
    pub fn matches(
        p: &RoutePolicy,
        h: &Header,
        dst_caps: Option<&[String]>,
        own_src: bool,
    ) -> bool {
        let m = &p.matches;
        (m.source_node_ids.is_empty() || m.source_node_ids.iter().any(|id| id.0 == h.src))
            && match m.source_tenant {
                None => true,
                Some(SourceTenant::Own) => own_src,
                Some(SourceTenant::Other) => !own_src,
            }
            && (m.stream_modes.is_empty()
                || m.stream_modes.iter().any(|s| Mode::from(*s) == h.mode))
            && (m.message_types.is_empty() || m.message_types.contains(&h.msg_type))
            && (m.dest_capabilities.is_empty()
                || dst_caps
                    .is_some_and(|caps| m.dest_capabilities.iter().all(|c| caps.contains(c))))
    }

    /// The id of the policy that decides `h`: the first usable, enabled, not disabled matching
    /// policy by (priority, scope, id).
    pub fn decide<'a>(set: &'a PolicySet, h: &Header) -> Option<&'a str> {
        let dst_caps = set
            .nodes
            .iter()
            .find(|n| n.id == h.dst)
            .map(|n| n.capabilities.as_slice());
        set.policies
            .iter()
            .filter(|(scope, p)| {
                p.enabled && !(*scope != Scope::Fleet && set.disabled.contains(&p.id))
            })
            .filter(|(_, p)| match p.action.kind {
                ActionType::Redirect => p.action.redirect_node_id.is_some(),
                ActionType::Ratelimit => p.action.rate_limit.is_some_and(|r| r > 0),
                _ => true,
            })
            .filter(|(_, p)| matches(p, h, dst_caps, set.own_tenant.contains(&h.src)))
            .min_by(|a, b| (a.1.priority, a.0, &a.1.id).cmp(&(b.1.priority, b.0, &b.1.id)))
            .map(|(_, p)| p.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Encap;
    use nexus_ca::NodeId;
    use nexus_crdt::{RouteAction, RouteMatch, StreamMode};
    use proptest::prelude::*;

    fn header(src: u8, dst: u8, mode: Mode, msg_type: u16) -> Header {
        Header {
            mode,
            msg_type,
            hops: 8,
            src: [src; 16],
            dst: [dst; 16],
            stream_id: 0,
            length: 0,
            offset: 14,
            encap: Encap::Ethernet,
        }
    }

    fn policy(id: &str, priority: u32, kind: ActionType, m: RouteMatch) -> RoutePolicy {
        let mut action = RouteAction::new(kind);
        match kind {
            ActionType::Ratelimit => action.rate_limit = Some(100),
            ActionType::Redirect => action.redirect_node_id = Some(NodeId([9; 16])),
            _ => {}
        }
        RoutePolicy::new(id, priority, m, action)
    }

    #[test]
    fn priority_then_scope_then_id_decides() {
        let deny_video = RouteMatch {
            message_types: vec![7],
            ..Default::default()
        };
        let set = PolicySet {
            policies: vec![
                (
                    Scope::Tenant,
                    policy("allow-all", 100, ActionType::Allow, RouteMatch::default()),
                ),
                (
                    Scope::Tenant,
                    policy("b-deny-7", 10, ActionType::Deny, deny_video.clone()),
                ),
                (
                    Scope::Fleet,
                    policy("z-fleet-7", 10, ActionType::Ratelimit, deny_video),
                ),
            ],
            nodes: vec![KnownNode {
                id: [2; 16],
                capabilities: vec![],
            }],
            ..Default::default()
        };
        let c = Classifier::compile(&set);
        let rule = |h: &Header| c.classify(h).map(|i| c.rule(i).id.as_str());
        assert_eq!(rule(&header(1, 2, Mode::Be, 7)), Some("z-fleet-7"));
        assert_eq!(rule(&header(1, 2, Mode::Be, 8)), Some("allow-all"));
        assert!(c.has_route(&[2; 16]) && !c.has_route(&[3; 16]));
    }

    #[test]
    fn disabled_overridden_and_unusable_policies_are_left_out() {
        let mut off = policy("off", 1, ActionType::Deny, RouteMatch::default());
        off.enabled = false;
        let mut broken = policy("broken", 2, ActionType::Redirect, RouteMatch::default());
        broken.action.redirect_node_id = None;
        let set = PolicySet {
            policies: vec![
                (Scope::Tenant, off),
                (Scope::Tenant, broken),
                (
                    Scope::Tenant,
                    policy("overridden", 3, ActionType::Deny, RouteMatch::default()),
                ),
                (
                    Scope::Tenant,
                    policy("last", 4, ActionType::Allow, RouteMatch::default()),
                ),
            ],
            disabled: ["overridden".to_string()].into(),
            ..Default::default()
        };
        let c = Classifier::compile(&set);
        assert_eq!(c.rules().len(), 1);
        assert_eq!(c.skipped(), 1);
        assert_eq!(c.classify(&header(1, 2, Mode::Ro, 0)), Some(0));
    }

    #[test]
    fn an_override_cannot_switch_off_a_fleet_policy_that_shares_an_id() {
        let set = PolicySet {
            policies: vec![
                (
                    Scope::Fleet,
                    policy("block-x", 5, ActionType::Deny, RouteMatch::default()),
                ),
                (
                    Scope::Tenant,
                    policy("block-x", 1, ActionType::Allow, RouteMatch::default()),
                ),
            ],
            disabled: ["block-x".to_string()].into(),
            ..Default::default()
        };
        let c = Classifier::compile(&set);
        assert_eq!(c.rules().len(), 1);
        assert_eq!(c.rules()[0].scope, Scope::Fleet);
        assert_eq!(
            reference::decide(&set, &header(1, 2, Mode::Be, 0)),
            Some("block-x")
        );
    }

    #[test]
    fn destination_capabilities_match_known_nodes_only() {
        let gpu = RouteMatch {
            dest_capabilities: vec!["gpu".into()],
            ..Default::default()
        };
        let set = PolicySet {
            policies: vec![(Scope::Tenant, policy("gpu-only", 1, ActionType::Deny, gpu))],
            nodes: vec![
                KnownNode {
                    id: [2; 16],
                    capabilities: vec!["gpu".into(), "edge".into()],
                },
                KnownNode {
                    id: [3; 16],
                    capabilities: vec!["edge".into()],
                },
            ],
            ..Default::default()
        };
        let c = Classifier::compile(&set);
        assert_eq!(c.classify(&header(1, 2, Mode::Be, 0)), Some(0));
        assert_eq!(c.classify(&header(1, 3, Mode::Be, 0)), None);
        assert_eq!(c.classify(&header(1, 4, Mode::Be, 0)), None);
    }

    #[test]
    fn a_swap_publishes_the_next_generation() {
        let handle = PolicyHandle::default();
        assert_eq!(handle.load().generation(), 1);
        let held = handle.load();
        assert_eq!(handle.publish(Classifier::empty()), 2);
        assert_eq!(
            held.generation(),
            1,
            "a loaded classifier stays valid across a swap"
        );
        assert_eq!(handle.load().generation(), 2);
    }

    #[test]
    fn tenant_default_policies_allow_within_and_deny_across_tenants() {
        let scoped = |id: &str, prio: u32, kind: ActionType, tenant: Option<SourceTenant>| {
            let m = RouteMatch {
                source_tenant: tenant,
                ..Default::default()
            };
            (Scope::Tenant, policy(id, prio, kind, m))
        };
        let mut set = PolicySet {
            policies: vec![
                scoped("allow-own", 999, ActionType::Allow, Some(SourceTenant::Own)),
                scoped(
                    "deny-other",
                    1000,
                    ActionType::Deny,
                    Some(SourceTenant::Other),
                ),
            ],
            own_tenant: [[1; 16], [2; 16]].into_iter().collect(),
            ..Default::default()
        };
        let c = Classifier::compile(&set);
        let decided = |c: &Classifier, src: u8| {
            c.classify(&header(src, 2, Mode::Be, 0))
                .map(|i| c.rule(i).id.clone())
        };
        assert_eq!(decided(&c, 1).as_deref(), Some("allow-own"));
        assert_eq!(
            decided(&c, 9).as_deref(),
            Some("deny-other"),
            "unknown source"
        );
        // A policy the tenant writes (lower priority number) decides first.
        let partner = RouteMatch {
            source_node_ids: vec![NodeId([9; 16])],
            ..Default::default()
        };
        set.policies.push((
            Scope::Tenant,
            policy("partner", 10, ActionType::Allow, partner),
        ));
        let c = Classifier::compile(&set);
        assert_eq!(decided(&c, 9).as_deref(), Some("partner"));
        assert_eq!(decided(&c, 8).as_deref(), Some("deny-other"));
        // Naming a source does not make it one of the tenant's.
        let named_other = RouteMatch {
            source_node_ids: vec![NodeId([8; 16])],
            source_tenant: Some(SourceTenant::Own),
            ..Default::default()
        };
        set.policies.push((
            Scope::Tenant,
            policy("never", 1, ActionType::Deny, named_other),
        ));
        let c = Classifier::compile(&set);
        assert_eq!(decided(&c, 8).as_deref(), Some("deny-other"));
    }

    const IDS: u8 = 6;
    const CAPS: [&str; 3] = ["gpu", "edge", "core"];

    fn arb_policy(i: usize) -> impl Strategy<Value = (Scope, RoutePolicy)> {
        let ids = proptest::collection::vec(0..IDS, 0..3);
        let caps = proptest::collection::vec(0..CAPS.len(), 0..2);
        let modes = proptest::collection::vec(0..4u8, 0..3);
        let types = proptest::collection::vec(0..6u16, 0..3);
        let kind = prop_oneof![
            Just(ActionType::Allow),
            Just(ActionType::Deny),
            Just(ActionType::Ratelimit),
            Just(ActionType::Redirect)
        ];
        let scope = prop_oneof![Just(Scope::Fleet), Just(Scope::Site), Just(Scope::Tenant)];
        (
            ids,
            caps,
            modes,
            types,
            kind,
            scope,
            0..8u32,
            any::<bool>(),
            any::<bool>(),
            0..3u8,
        )
            .prop_map(
                move |(ids, caps, modes, types, kind, scope, prio, enabled, broken, tenant)| {
                    let m = RouteMatch {
                        source_node_ids: ids.into_iter().map(|b| NodeId([b; 16])).collect(),
                        dest_capabilities: caps.into_iter().map(|c| CAPS[c].to_string()).collect(),
                        stream_modes: modes
                            .into_iter()
                            .map(|m| {
                                [
                                    StreamMode::RO,
                                    StreamMode::RU,
                                    StreamMode::BE,
                                    StreamMode::PR,
                                ][m as usize]
                            })
                            .collect(),
                        message_types: types,
                        source_tenant: [None, Some(SourceTenant::Own), Some(SourceTenant::Other)]
                            [tenant as usize],
                    };
                    let mut p = policy(&format!("p{i:03}"), prio, kind, m);
                    p.enabled = enabled || !i.is_multiple_of(3);
                    if broken && i.is_multiple_of(5) {
                        p.action.rate_limit = None;
                        p.action.redirect_node_id = None;
                    }
                    (scope, p)
                },
            )
    }

    fn arb_set() -> impl Strategy<Value = PolicySet> {
        (1usize..150)
            .prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>())
            .prop_flat_map(|policies| {
                let nodes = proptest::collection::vec(
                    proptest::collection::vec(0..CAPS.len(), 0..3),
                    IDS as usize,
                );
                (
                    Just(policies),
                    nodes,
                    proptest::collection::hash_set(0..150usize, 0..5),
                )
            })
            .prop_map(|(policies, caps, disabled)| PolicySet {
                disabled: disabled.into_iter().map(|i| format!("p{i:03}")).collect(),
                nodes: caps
                    .into_iter()
                    .enumerate()
                    // Node ids 0..IDS-1; the last id is left out so unknown destinations occur.
                    .take(IDS as usize - 1)
                    .map(|(i, c)| KnownNode {
                        id: [i as u8; 16],
                        capabilities: c.into_iter().map(|c| CAPS[c].to_string()).collect(),
                    })
                    .collect(),
                policies,
                // Sources 0..2 are of this node's tenant.
                own_tenant: (0..3u8).map(|i| [i; 16]).collect(),
                version: String::new(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The classifier and the reference matcher pick the same policy for every frame.
        #[test]
        fn classifier_agrees_with_the_reference(set in arb_set()) {
            let c = Classifier::compile(&set);
            for src in 0..IDS + 1 {
                for dst in 0..IDS + 1 {
                    for mode in Mode::ALL {
                        for t in 0..7u16 {
                            let h = header(src, dst, mode, t);
                            let got = c.classify(&h).map(|i| c.rule(i).id.as_str());
                            prop_assert_eq!(got, reference::decide(&set, &h), "{:?}", h);
                        }
                    }
                }
            }
        }
    }
}
