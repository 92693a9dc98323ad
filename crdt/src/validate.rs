//! Validation before a write and after every merge, and the quarantine that follows from it.
//!
//! [`validate`] and [`validate_tenant`] report **every** problem, each with the field path it
//! concerns (`routes.r1.priority: must be 0..=1000`) and the object it makes invalid (the
//! quarantine unit: `routes.r1`, `tenants.acme`, `settings`, …).
//!
//! After a merge the node does not reject anything (the changes are signed and authorized, and
//! every replica must hold the same history); it computes the [`Effective`] configuration
//! instead: every object without problems is applied, every object with problems is quarantined
//! (not applied, reported) until a later change fixes it. The computation is a pure function of
//! the merged model (and of the node set passed in), iterates in key order, and so yields the
//! same applied set and the same quarantine list on every node that holds the same changes.
//!
//! **Determinism depends on the inputs.** `known_nodes` must be the same on every node for the
//! same configuration, so it must come from replicated, signed state (enrollment records), not
//! from a node's current membership view, which differs between nodes for a while after a join.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use nexus_ca::{NodeId, validate_name};

use crate::model::{
    ActionType, ApiKeyRecord, FirmwareTarget, FleetDoc, NodeOverride, OidcProvider, RouteAction,
    RoutePolicy, TenantDoc, split_site_key,
};

/// Highest (least important) route priority; lower wins.
pub const PRIORITY_MAX: u32 = 1000;
/// Highest rate limit, messages per second.
pub const RATE_LIMIT_MAX: u64 = 10_000_000;
/// Highest scoring-weight override.
pub const WEIGHT_MAX: f64 = 1000.0;
/// Longest display name, characters.
pub const NAME_MAX: usize = 128;
/// Longest object id, bytes (`[A-Za-z0-9_.-]`).
pub const ID_MAX: usize = 64;

/// One validation problem.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The object the problem invalidates (`routes.r1`, `tenants.acme`, `settings`), or empty
    /// for a problem with the document as a whole (which quarantines every object).
    pub object: String,
    /// The field path (`routes.r1.priority`).
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found, in a stable order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem(s)): ", self.0.len())?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// A node, as replicated enrollment records know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownNode {
    /// Its tenant.
    pub tenant: String,
    /// Its site (may be empty).
    pub site: String,
}

/// The nodes a configuration may refer to.
pub type KnownNodes = BTreeMap<NodeId, KnownNode>;

/// An object left out of the applied configuration, with every reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The object (`routes.r1`), as in [`Problem::object`].
    pub id: String,
    /// Every problem, as `path: message`.
    pub reasons: Vec<String>,
}

/// The configuration a node applies, and what it holds back.
#[derive(Clone, Debug, PartialEq)]
pub struct Effective<T> {
    /// The model with every quarantined object removed (quarantined settings fall back to
    /// their defaults).
    pub config: T,
    /// Quarantined objects, sorted by id.
    pub quarantined: Vec<Quarantined>,
}

/// Checks the fleet document.
pub fn validate(fleet: &FleetDoc) -> Result<(), Invalid> {
    into_result(check_fleet(fleet))
}

/// Checks a tenant's document against the fleet document (the tenant must exist) and the
/// known nodes (every node reference must be a node of this tenant).
pub fn validate_tenant(
    fleet: &FleetDoc,
    tenant: &TenantDoc,
    known_nodes: &KnownNodes,
) -> Result<(), Invalid> {
    into_result(check_tenant(fleet, tenant, known_nodes))
}

/// The fleet configuration to apply: `fleet` without its invalid objects.
pub fn effective_fleet(fleet: &FleetDoc) -> Effective<FleetDoc> {
    effective_fleet_with(fleet, Vec::new())
}

/// As [`effective_fleet`], also quarantining objects that failed to hydrate.
pub fn effective_fleet_with(fleet: &FleetDoc, mut problems: Vec<Problem>) -> Effective<FleetDoc> {
    problems.extend(check_fleet(fleet));
    let bad = group(&problems);
    let mut config = fleet.clone();
    if bad.contains_key("settings") {
        config.settings = Default::default();
    }
    retain(&mut config.tenants, "tenants", &bad);
    retain(&mut config.anchors, "anchors", &bad);
    retain(&mut config.revocations, "revocations", &bad);
    retain(&mut config.policies, "policies", &bad);
    retain(&mut config.api_keys, "api_keys", &bad);
    retain(&mut config.tenant_cas, "tenant_cas", &bad);
    retain(&mut config.duties, "duties", &bad);
    Effective {
        config,
        quarantined: quarantine_list(bad),
    }
}

/// The tenant configuration to apply: `tenant` without its invalid objects. A problem with the
/// document as a whole (its tenant no longer exists in the fleet document) quarantines every
/// object.
pub fn effective_tenant(
    fleet: &FleetDoc,
    tenant: &TenantDoc,
    known_nodes: &KnownNodes,
) -> Effective<TenantDoc> {
    effective_tenant_with(fleet, tenant, known_nodes, Vec::new())
}

/// As [`effective_tenant`], also quarantining objects that failed to hydrate.
pub fn effective_tenant_with(
    fleet: &FleetDoc,
    tenant: &TenantDoc,
    known_nodes: &KnownNodes,
    mut problems: Vec<Problem>,
) -> Effective<TenantDoc> {
    problems.extend(check_tenant(fleet, tenant, known_nodes));
    let doc_level: Vec<String> = problems
        .iter()
        .filter(|p| p.object.is_empty())
        .map(|p| p.to_string())
        .collect();
    let mut bad = group(&problems);
    bad.remove("");
    if !doc_level.is_empty() {
        let all = object_ids(tenant);
        for id in all {
            bad.entry(id).or_default().extend(doc_level.iter().cloned());
        }
    }
    let mut config = tenant.clone();
    retain(&mut config.routes, "routes", &bad);
    retain(&mut config.firmware_targets, "firmware_targets", &bad);
    retain(&mut config.node_overrides, "node_overrides", &bad);
    retain(&mut config.site_routes, "site_routes", &bad);
    retain(&mut config.site_node_overrides, "site_node_overrides", &bad);
    retain(&mut config.api_keys, "api_keys", &bad);
    retain(&mut config.oidc, "oidc", &bad);
    let mut quarantined = quarantine_list(bad);
    if !doc_level.is_empty() && quarantined.is_empty() {
        // An empty document with a document-level problem still reports it.
        quarantined.push(Quarantined {
            id: "tenant_id".into(),
            reasons: doc_level,
        });
    }
    Effective {
        config,
        quarantined,
    }
}

fn into_result(mut problems: Vec<Problem>) -> Result<(), Invalid> {
    if problems.is_empty() {
        Ok(())
    } else {
        problems.sort();
        Err(Invalid(problems))
    }
}

fn group(problems: &[Problem]) -> BTreeMap<String, Vec<String>> {
    let mut bad: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in problems {
        bad.entry(p.object.clone()).or_default().push(p.to_string());
    }
    for reasons in bad.values_mut() {
        reasons.sort();
        reasons.dedup();
    }
    bad
}

fn retain<V>(map: &mut BTreeMap<String, V>, prefix: &str, bad: &BTreeMap<String, Vec<String>>) {
    map.retain(|k, _| !bad.contains_key(&format!("{prefix}.{k}")));
}

fn quarantine_list(bad: BTreeMap<String, Vec<String>>) -> Vec<Quarantined> {
    bad.into_iter()
        .map(|(id, reasons)| Quarantined { id, reasons })
        .collect()
}

fn object_ids(t: &TenantDoc) -> Vec<String> {
    let mut ids = Vec::new();
    let mut add = |prefix: &str, keys: &mut dyn Iterator<Item = &String>| {
        ids.extend(keys.map(|k| format!("{prefix}.{k}")));
    };
    add("routes", &mut t.routes.keys());
    add("firmware_targets", &mut t.firmware_targets.keys());
    add("node_overrides", &mut t.node_overrides.keys());
    add("site_routes", &mut t.site_routes.keys());
    add("site_node_overrides", &mut t.site_node_overrides.keys());
    add("api_keys", &mut t.api_keys.keys());
    add("oidc", &mut t.oidc.keys());
    ids
}

/// Collects problems, each tied to the object it invalidates.
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn add(&mut self, object: &str, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            object: object.to_string(),
            path: path.into(),
            message: message.into(),
        });
    }

    fn id(&mut self, object: &str, path: &str, id: &str) {
        if id.is_empty() || id.len() > ID_MAX {
            self.add(
                object,
                path,
                format!("an id must be 1..={ID_MAX} characters"),
            );
        } else if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.add(
                object,
                path,
                format!("id {id:?} may use only letters, digits, '-', '_' and '.'"),
            );
        }
    }

    fn name(&mut self, object: &str, path: &str, name: &str) {
        let n = name.chars().count();
        if n == 0 || n > NAME_MAX {
            self.add(object, path, format!("must be 1..={NAME_MAX} characters"));
        } else if name.chars().any(char::is_control) {
            self.add(object, path, "must not contain control characters");
        }
    }

    fn time(&mut self, object: &str, path: &str, unix_ms: i64) {
        if unix_ms < 0 {
            self.add(
                object,
                path,
                "must be a Unix time in milliseconds, not negative",
            );
        }
    }

    fn positive(&mut self, object: &str, path: &str, v: Option<u64>) {
        if v == Some(0) {
            self.add(
                object,
                path,
                "must be positive (leave it out for unlimited)",
            );
        }
    }

    fn range(&mut self, object: &str, path: &str, v: Option<u64>, lo: u64, hi: u64, unit: &str) {
        if let Some(v) = v
            && !(lo..=hi).contains(&v)
        {
            self.add(object, path, format!("must be {lo}..={hi} {unit} (is {v})"));
        }
    }

    fn weights(&mut self, object: &str, path: &str, weights: &BTreeMap<String, f64>) {
        for (name, w) in weights {
            let p = format!("{path}.{name}");
            if name.is_empty() || name.len() > ID_MAX {
                self.add(
                    object,
                    &p,
                    format!("a weight name must be 1..={ID_MAX} characters"),
                );
            }
            if !w.is_finite() || *w < 0.0 || *w > WEIGHT_MAX {
                self.add(
                    object,
                    &p,
                    format!("must be a number in 0..={WEIGHT_MAX} (is {w})"),
                );
            }
        }
    }

    /// A node reference that must name a known node of `tenant` (and of `site`, if given).
    fn node_ref(
        &mut self,
        object: &str,
        path: &str,
        node: &NodeId,
        scope: &NodeScope<'_>,
        site: Option<&str>,
    ) {
        let NodeScope::Tenant { tenant, nodes } = scope else {
            return;
        };
        match nodes.get(node) {
            None => self.add(object, path, format!("node {node} is not a known node")),
            Some(n) if n.tenant != *tenant => self.add(
                object,
                path,
                format!("node {node} belongs to another tenant; refer to nodes of tenant {tenant:?} only"),
            ),
            Some(n) => {
                if let Some(site) = site
                    && n.site != site
                {
                    self.add(
                        object,
                        path,
                        format!("node {node} is at site {:?}, not at site {site:?}", n.site),
                    );
                }
            }
        }
    }
}

/// What node references in a policy must satisfy.
enum NodeScope<'a> {
    /// Fleet-wide policies: node ids are only checked for form (no tenant).
    Fleet,
    /// A tenant's objects: nodes must be known nodes of the tenant.
    Tenant {
        tenant: &'a str,
        nodes: &'a KnownNodes,
    },
}

fn check_fleet(fleet: &FleetDoc) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let s = &fleet.settings;
    c.range(
        "settings",
        "settings.heartbeat_interval_ms",
        s.heartbeat_interval_ms,
        100,
        600_000,
        "ms",
    );
    c.range(
        "settings",
        "settings.push_fanout",
        s.push_fanout,
        1,
        64,
        "peers",
    );
    c.range(
        "settings",
        "settings.anti_entropy_interval_ms",
        s.anti_entropy_interval_ms,
        100,
        3_600_000,
        "ms",
    );

    for (id, t) in &fleet.tenants {
        let obj = format!("tenants.{id}");
        if let Err(e) = validate_name("tenant", id, false) {
            c.add(&obj, &obj, e.to_string());
        }
        c.name(&obj, &format!("{obj}.name"), &t.name);
        c.time(&obj, &format!("{obj}.created_at"), t.created_at);
        c.positive(&obj, &format!("{obj}.quotas.max_nodes"), t.quotas.max_nodes);
        c.positive(
            &obj,
            &format!("{obj}.quotas.max_connections"),
            t.quotas.max_connections,
        );
        c.positive(
            &obj,
            &format!("{obj}.quotas.max_bandwidth_mbps"),
            t.quotas.max_bandwidth_mbps,
        );
        c.positive(
            &obj,
            &format!("{obj}.quotas.api_requests_per_second"),
            t.quotas.api_requests_per_second,
        );
        c.positive(&obj, &format!("{obj}.quotas.api_burst"), t.quotas.api_burst);
    }
    for (id, a) in &fleet.anchors {
        let obj = format!("anchors.{id}");
        if id.parse::<NodeId>().is_err() {
            c.add(&obj, &obj, "the key must be a node id (32 hex characters)");
        }
        if let Err(e) = validate_name("site", &a.site, true) {
            c.add(&obj, format!("{obj}.site"), e.to_string());
        }
        c.time(&obj, &format!("{obj}.added_at"), a.added_at);
    }
    for (serial, r) in &fleet.revocations {
        let obj = format!("revocations.{serial}");
        if serial.is_empty()
            || serial.len() > 40
            || !serial
                .chars()
                .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch))
        {
            c.add(
                &obj,
                &obj,
                "the key must be a MIC serial: 1..=40 lowercase hex characters",
            );
        }
        if r.reason.len() > NAME_MAX {
            c.add(
                &obj,
                format!("{obj}.reason"),
                format!("must be at most {NAME_MAX} bytes"),
            );
        }
        c.time(&obj, &format!("{obj}.revoked_at"), r.revoked_at);
    }
    for (id, p) in &fleet.policies {
        let obj = format!("policies.{id}");
        check_route(&mut c, &obj, id, p, "", &NodeScope::Fleet);
    }
    for (id, k) in &fleet.api_keys {
        check_api_key(&mut c, &format!("api_keys.{id}"), id, k, &["fleet-admin"]);
    }
    for (key, ca) in &fleet.tenant_cas {
        let obj = format!("tenant_cas.{key}");
        if *key != format!("{}/{}", ca.tenant, ca.anchor) {
            c.add(
                &obj,
                &obj,
                "the key must be <tenant>/<anchor node id> of the record",
            );
        }
        if ca.anchor.parse::<NodeId>().is_err() {
            c.add(
                &obj,
                format!("{obj}.anchor"),
                "must be a node id: 32 hex characters",
            );
        }
        if !ca.cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            c.add(&obj, format!("{obj}.cert_pem"), "must be a PEM certificate");
        }
        c.time(&obj, &format!("{obj}.created_at"), ca.created_at);
    }
    for (name, lease) in &fleet.duties {
        let obj = format!("duties.{name}");
        c.id(&obj, &obj, name);
        if lease.holder.parse::<NodeId>().is_err() {
            c.add(
                &obj,
                format!("{obj}.holder"),
                "must be a node id: 32 hex characters",
            );
        }
        c.time(&obj, &format!("{obj}.acquired_at"), lease.acquired_at);
        if lease.lease_ms < 0 {
            c.add(&obj, format!("{obj}.lease_ms"), "must not be negative");
        }
    }
    c.problems
}

/// Roles a tenant's API keys and OIDC tokens may carry.
pub const TENANT_ROLES: &[&str] = &["admin", "operator", "viewer"];

fn check_api_key(c: &mut Checker, obj: &str, id: &str, k: &ApiKeyRecord, roles: &[&str]) {
    c.id(obj, obj, id);
    c.name(obj, &format!("{obj}.name"), &k.name);
    if !roles.contains(&k.role.as_str()) {
        c.add(
            obj,
            format!("{obj}.role"),
            format!("must be one of {roles:?} here (is {:?})", k.role),
        );
    }
    if k.key_hash.len() != 64
        || !k
            .key_hash
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        c.add(
            obj,
            format!("{obj}.key_hash"),
            "must be 64 lowercase hex characters (SHA-256)",
        );
    }
    c.time(obj, &format!("{obj}.created_at"), k.created_at);
    if k.created_by.len() > NAME_MAX {
        c.add(
            obj,
            format!("{obj}.created_by"),
            format!("must be at most {NAME_MAX} bytes"),
        );
    }
}

/// What is wrong with an OIDC provider stored under `id` (`path: message` each).
pub fn oidc_problems(id: &str, p: &OidcProvider) -> Vec<String> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    check_oidc(&mut c, &format!("oidc.{id}"), id, p);
    c.problems.iter().map(|p| p.to_string()).collect()
}

fn check_oidc(c: &mut Checker, obj: &str, id: &str, p: &OidcProvider) {
    c.id(obj, obj, id);
    let url = |c: &mut Checker, field: &str, v: &str| {
        let ok = (v.starts_with("https://") || v.starts_with("http://"))
            && v.len() <= 2048
            && !v.chars().any(char::is_whitespace);
        if !ok {
            c.add(
                obj,
                format!("{obj}.{field}"),
                format!("must be an http(s) URL of at most 2048 characters (is {v:?})"),
            );
        }
    };
    url(c, "issuer", &p.issuer);
    url(c, "jwks_uri", &p.jwks_uri);
    // Keys fetched over plain HTTP could be replaced by anyone on the path: only on loopback.
    if let Some(rest) = p.jwks_uri.strip_prefix("http://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let loopback = host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            c.add(
                obj,
                format!("{obj}.jwks_uri"),
                format!(
                    "must be https (plain http only on loopback), is {:?}",
                    p.jwks_uri
                ),
            );
        }
    }
    if p.audience.is_empty() || p.audience.len() > NAME_MAX {
        c.add(
            obj,
            format!("{obj}.audience"),
            format!("must be 1..={NAME_MAX} bytes"),
        );
    }
    if let Some(claim) = &p.role_claim
        && (claim.is_empty() || claim.len() > NAME_MAX)
    {
        c.add(
            obj,
            format!("{obj}.role_claim"),
            format!("must be 1..={NAME_MAX} bytes"),
        );
    }
    if let Some(role) = &p.default_role
        && !TENANT_ROLES.contains(&role.as_str())
    {
        c.add(
            obj,
            format!("{obj}.default_role"),
            format!("must be one of {TENANT_ROLES:?} (is {role:?})"),
        );
    }
    if p.role_claim.is_none() && p.default_role.is_none() {
        c.add(
            obj,
            obj,
            "set role_claim, default_role or both: otherwise no token carries a role",
        );
    }
}

fn check_tenant(fleet: &FleetDoc, t: &TenantDoc, nodes: &KnownNodes) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let tenant = t.tenant_id.as_str();
    if !fleet.tenants.contains_key(tenant) {
        c.add(
            "",
            "tenant_id",
            format!("tenant {tenant:?} does not exist in the fleet document"),
        );
    }
    let scope = NodeScope::Tenant { tenant, nodes };

    // Route ids share one namespace across the tenant-wide and site-scoped routes, so a node
    // never has to choose between two policies with one id.
    let mut owners: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (id, r) in &t.routes {
        let obj = format!("routes.{id}");
        check_route(&mut c, &obj, id, r, tenant, &scope);
        owners.entry(id).or_default().push(obj);
    }
    for (key, r) in &t.site_routes {
        let obj = format!("site_routes.{key}");
        match split_site_key(key) {
            Some((site, id)) => {
                if let Err(e) = validate_name("site", site, false) {
                    c.add(&obj, &obj, e.to_string());
                }
                check_route(&mut c, &obj, id, r, tenant, &scope);
                owners.entry(id).or_default().push(obj);
            }
            None => c.add(&obj, &obj, "the key must be <site>/<route id>"),
        }
    }
    for objs in owners.values().filter(|o| o.len() > 1) {
        for obj in objs {
            let others: Vec<&str> = objs
                .iter()
                .filter(|o| *o != obj)
                .map(String::as_str)
                .collect();
            c.add(
                obj,
                obj,
                format!("the route id is also used by {}", others.join(", ")),
            );
        }
    }
    let route_ids: BTreeSet<&str> = owners.keys().copied().collect();
    for (id, k) in &t.api_keys {
        check_api_key(&mut c, &format!("api_keys.{id}"), id, k, TENANT_ROLES);
    }
    for (id, p) in &t.oidc {
        check_oidc(&mut c, &format!("oidc.{id}"), id, p);
    }

    for (id, f) in &t.firmware_targets {
        check_firmware(&mut c, &format!("firmware_targets.{id}"), id, f);
    }
    for (node, o) in &t.node_overrides {
        let obj = format!("node_overrides.{node}");
        check_override(&mut c, &obj, node, None, o, &scope, &route_ids);
    }
    for (key, o) in &t.site_node_overrides {
        let obj = format!("site_node_overrides.{key}");
        match split_site_key(key) {
            Some((site, node)) => {
                check_override(&mut c, &obj, node, Some(site), o, &scope, &route_ids)
            }
            None => c.add(&obj, &obj, "the key must be <site>/<node id>"),
        }
    }
    c.problems
}

fn check_route(
    c: &mut Checker,
    obj: &str,
    id: &str,
    r: &RoutePolicy,
    tenant: &str,
    scope: &NodeScope<'_>,
) {
    c.id(obj, obj, id);
    if r.id != id {
        c.add(
            obj,
            format!("{obj}.id"),
            format!("must equal the key {id:?} (is {:?})", r.id),
        );
    }
    c.name(obj, &format!("{obj}.name"), &r.name);
    if r.tenant_id != tenant {
        let want = if tenant.is_empty() {
            "must be empty for a fleet-wide policy".to_string()
        } else {
            format!("must be {tenant:?}, the document's tenant")
        };
        c.add(
            obj,
            format!("{obj}.tenant_id"),
            format!("{want} (is {:?})", r.tenant_id),
        );
    }
    if r.priority > PRIORITY_MAX {
        c.add(
            obj,
            format!("{obj}.priority"),
            format!("must be 0..={PRIORITY_MAX} (is {})", r.priority),
        );
    }
    c.time(obj, &format!("{obj}.created_at"), r.created_at);

    let m = &r.matches;
    let mut seen = BTreeSet::new();
    for (i, n) in m.source_node_ids.iter().enumerate() {
        let p = format!("{obj}.match.source_node_ids[{i}]");
        if !seen.insert(*n) {
            c.add(obj, &p, format!("node {n} is listed twice"));
        }
        c.node_ref(obj, &p, n, scope, None);
    }
    let mut caps = BTreeSet::new();
    for (i, cap) in m.dest_capabilities.iter().enumerate() {
        let p = format!("{obj}.match.dest_capabilities[{i}]");
        if cap.is_empty() || cap.len() > ID_MAX {
            c.add(obj, &p, format!("must be 1..={ID_MAX} characters"));
        }
        if !caps.insert(cap) {
            c.add(obj, &p, format!("capability {cap:?} is listed twice"));
        }
    }
    let mut modes = BTreeSet::new();
    for (i, mode) in m.stream_modes.iter().enumerate() {
        if !modes.insert(mode) {
            c.add(
                obj,
                format!("{obj}.match.stream_modes[{i}]"),
                format!("stream mode {mode:?} is listed twice"),
            );
        }
    }
    let mut types = BTreeSet::new();
    for (i, t) in m.message_types.iter().enumerate() {
        if !types.insert(t) {
            c.add(
                obj,
                format!("{obj}.match.message_types[{i}]"),
                format!("message type {t} is listed twice"),
            );
        }
    }
    check_action(c, obj, &r.action, scope);
}

fn check_action(c: &mut Checker, obj: &str, a: &RouteAction, scope: &NodeScope<'_>) {
    let rate = format!("{obj}.action.rate_limit");
    match (a.kind, a.rate_limit) {
        (ActionType::Ratelimit, None) => c.add(
            obj,
            &rate,
            format!("a ratelimit action needs a rate limit (1..={RATE_LIMIT_MAX} messages/s)"),
        ),
        (ActionType::Ratelimit, Some(v)) if v == 0 || v > RATE_LIMIT_MAX => c.add(
            obj,
            &rate,
            format!("must be 1..={RATE_LIMIT_MAX} messages/s (is {v})"),
        ),
        (ActionType::Ratelimit, Some(_)) => {}
        (kind, Some(_)) => c.add(
            obj,
            &rate,
            format!("only a ratelimit action has a rate limit (action is {kind:?})"),
        ),
        (_, None) => {}
    }
    let target = format!("{obj}.action.redirect_node_id");
    match (a.kind, &a.redirect_node_id) {
        (ActionType::Redirect, None) => c.add(
            obj,
            &target,
            "a redirect action needs a target node of the same tenant",
        ),
        (ActionType::Redirect, Some(n)) => c.node_ref(obj, &target, n, scope, None),
        (kind, Some(_)) => c.add(
            obj,
            &target,
            format!("only a redirect action has a target (action is {kind:?})"),
        ),
        (_, None) => {}
    }
    c.weights(
        obj,
        &format!("{obj}.action.weight_override"),
        &a.weight_override,
    );
}

fn check_firmware(c: &mut Checker, obj: &str, id: &str, f: &FirmwareTarget) {
    c.id(obj, obj, id);
    if f.id != id {
        c.add(
            obj,
            format!("{obj}.id"),
            format!("must equal the key {id:?} (is {:?})", f.id),
        );
    }
    if f.version.is_empty()
        || f.version.len() > ID_MAX
        || !f
            .version
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '+' | '-'))
    {
        c.add(
            obj,
            format!("{obj}.version"),
            format!(
                "must be 1..={ID_MAX} characters of [0-9A-Za-z.+-] (is {:?})",
                f.version
            ),
        );
    }
    if f.image_sha256.len() != 64
        || !f
            .image_sha256
            .chars()
            .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch))
    {
        c.add(
            obj,
            format!("{obj}.image_sha256"),
            "must be a SHA-256 digest: 64 lowercase hex characters",
        );
    }
    for k in f.selector.keys() {
        if k.is_empty() || k.len() > ID_MAX {
            c.add(
                obj,
                format!("{obj}.selector.{k}"),
                format!("a label name must be 1..={ID_MAX} characters"),
            );
        }
    }
    c.range(
        obj,
        &format!("{obj}.batch_size"),
        Some(f.batch_size.into()),
        1,
        10_000,
        "nodes",
    );
    c.range(
        obj,
        &format!("{obj}.max_unavailable_percent"),
        Some(f.max_unavailable_percent.into()),
        0,
        100,
        "percent",
    );
    c.range(
        obj,
        &format!("{obj}.health_timeout_s"),
        Some(f.health_timeout_s.into()),
        1,
        3600,
        "seconds",
    );
    c.time(obj, &format!("{obj}.created_at"), f.created_at);
}

fn check_override(
    c: &mut Checker,
    obj: &str,
    node: &str,
    site: Option<&str>,
    o: &NodeOverride,
    scope: &NodeScope<'_>,
    route_ids: &BTreeSet<&str>,
) {
    match node.parse::<NodeId>() {
        Ok(id) => c.node_ref(obj, obj, &id, scope, site),
        Err(_) => c.add(obj, obj, "the key must name a node id (32 hex characters)"),
    }
    let mut seen = BTreeSet::new();
    for (i, r) in o.disabled_routes.iter().enumerate() {
        let p = format!("{obj}.disabled_routes[{i}]");
        if !route_ids.contains(r.as_str()) {
            c.add(
                obj,
                &p,
                format!("route {r:?} does not exist in this tenant"),
            );
        }
        if !seen.insert(r) {
            c.add(obj, &p, format!("route {r:?} is listed twice"));
        }
    }
    c.weights(obj, &format!("{obj}.weight_override"), &o.weight_override);
    for (key, value) in &o.labels {
        if let Some(problem) = label_problem(key, value) {
            c.add(obj, format!("{obj}.labels.{key}"), problem);
        }
    }
}

/// What is wrong with a node label, if anything: keys are 1..=63 letters, digits, `-`, `_`,
/// `.`, `/`; values at most 255 characters without control characters.
pub fn label_problem(key: &str, value: &str) -> Option<String> {
    let ok_key = !key.is_empty()
        && key.len() <= 63
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !ok_key {
        return Some(format!(
            "label key {key:?} must be 1-63 characters of letters, digits, '-', '_', '.', '/'"
        ));
    }
    if value.chars().count() > 255 || value.chars().any(char::is_control) {
        return Some(format!(
            "label value for {key:?} must be at most 255 characters without control characters"
        ));
    }
    None
}
