//! Per-tenant usage counters (NCC-TN-003), I/O-free: what a node meters, what it reports to the
//! anchors, how anchors merge the reports, and how a range of them adds up for billing.
//!
//! # The counters
//!
//! A *row* is keyed by (node id, tenant, hour start in Unix ms, UTC) and holds four
//! [`UsageCounters`]: `bytes` (data-plane bytes the node received for its tenant),
//! `connections` (data-plane flows it opened), `api_calls` (API requests it answered for callers
//! of that tenant) and `node_seconds` (seconds it ran in that hour, at most 3600).
//!
//! **A row is cumulative and only grows.** Its one writer is the node it names; every report
//! carries the row's whole value so far, never a delta. Two reports of one row therefore merge
//! by taking the larger value of each field ([`UsageCounters::merge`]): one G-counter per node,
//! tenant and hour. A report that arrives twice, late, out of order, or again after a partition
//! healed changes nothing it has already counted, so anchors can accept every report from every
//! node without any bookkeeping of which ones they saw, and two anchors that received different
//! subsets of the reports agree once they have each seen the newest one.
//!
//! Totals over rows ([`period_totals`]) are plain sums: different rows never count the same
//! thing (a row has one node, one tenant, one hour).
//!
//! # Metering
//!
//! [`Meter`] is a node's side: increments (an API call, seconds of running, the data plane's
//! monotonic totals turned into deltas by [`Meter::traffic`]) go into the row of the hour they
//! happen in; [`Meter::take_changed`] hands out the rows that grew since the last call, for the
//! node to store. A meter restarted from its stored rows ([`Meter::new`]) continues them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One hour in milliseconds: rows are per hour.
pub const HOUR_MS: u64 = 3_600_000;
/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;
/// Most `node_seconds` one row can hold: a node runs at most an hour in an hour.
pub const MAX_NODE_SECONDS: u64 = 3600;
/// Longest range [`UsageRange`] accepts at hourly granularity (31 days: a billing month).
pub const MAX_HOURLY_RANGE_MS: u64 = 31 * DAY_MS;
/// Longest range [`UsageRange`] accepts at daily granularity (366 days).
pub const MAX_DAILY_RANGE_MS: u64 = 366 * DAY_MS;

/// The start of the hour (UTC) that `ms` falls in.
pub fn hour_of(ms: u64) -> u64 {
    ms - ms % HOUR_MS
}

/// The four counters of a row, or their sums over several rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UsageCounters {
    /// Data-plane bytes received.
    pub bytes: u64,
    /// Data-plane flows opened.
    pub connections: u64,
    /// API requests answered.
    pub api_calls: u64,
    /// Seconds the node ran.
    pub node_seconds: u64,
}

impl UsageCounters {
    /// One API call.
    pub const API_CALL: UsageCounters = UsageCounters {
        bytes: 0,
        connections: 0,
        api_calls: 1,
        node_seconds: 0,
    };

    /// Merges another report of the *same row*: the larger value of each field. Commutative,
    /// associative and idempotent. Returns whether any field grew.
    pub fn merge(&mut self, other: &UsageCounters) -> bool {
        let before = *self;
        self.bytes = self.bytes.max(other.bytes);
        self.connections = self.connections.max(other.connections);
        self.api_calls = self.api_calls.max(other.api_calls);
        self.node_seconds = self.node_seconds.max(other.node_seconds);
        *self != before
    }

    /// Adds an increment, or another row for a sum (saturating: a counter never wraps).
    pub fn add(&mut self, other: &UsageCounters) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.connections = self.connections.saturating_add(other.connections);
        self.api_calls = self.api_calls.saturating_add(other.api_calls);
        self.node_seconds = self.node_seconds.saturating_add(other.node_seconds);
    }

    /// Whether every field is at least `other`'s (this report already counts all of it).
    pub fn covers(&self, other: &UsageCounters) -> bool {
        self.bytes >= other.bytes
            && self.connections >= other.connections
            && self.api_calls >= other.api_calls
            && self.node_seconds >= other.node_seconds
    }

    /// Whether every field is zero.
    pub fn is_zero(&self) -> bool {
        *self == UsageCounters::default()
    }

    /// `node_seconds` in hours.
    pub fn node_hours(&self) -> f64 {
        self.node_seconds as f64 / 3600.0
    }
}

/// Which row: node, tenant, hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UsageKey {
    /// The node that counted (hex node id).
    pub node_id: String,
    /// The tenant the usage is billed to.
    pub tenant: String,
    /// Start of the hour, Unix ms (a multiple of [`HOUR_MS`]).
    pub hour_ms: u64,
}

/// One row as nodes report it and anchors store it: its key and its cumulative counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The node that counted (hex node id).
    pub node_id: String,
    /// The tenant the usage is billed to.
    pub tenant: String,
    /// Start of the hour, Unix ms.
    pub hour_ms: u64,
    /// The counters so far in that hour.
    #[serde(flatten)]
    pub counters: UsageCounters,
}

impl UsageRow {
    /// The row's key.
    pub fn key(&self) -> UsageKey {
        UsageKey {
            node_id: self.node_id.clone(),
            tenant: self.tenant.clone(),
            hour_ms: self.hour_ms,
        }
    }

    /// What is wrong with this row as a report from any node, if anything: an hour that is not
    /// a whole hour or lies in the future (beyond `now_ms` plus an hour of clock skew), more
    /// node-seconds than an hour has, an empty tenant.
    pub fn problem(&self, now_ms: u64) -> Option<String> {
        if !self.hour_ms.is_multiple_of(HOUR_MS) {
            return Some(format!(
                "hour_ms {} is not the start of an hour (a multiple of {HOUR_MS})",
                self.hour_ms
            ));
        }
        if self.hour_ms > now_ms.saturating_add(HOUR_MS) {
            return Some(format!(
                "hour_ms {} lies in the future (now {now_ms}): check the reporting node's clock",
                self.hour_ms
            ));
        }
        if self.counters.node_seconds > MAX_NODE_SECONDS {
            return Some(format!(
                "node_seconds {} is more than an hour has ({MAX_NODE_SECONDS})",
                self.counters.node_seconds
            ));
        }
        if self.tenant.is_empty() {
            return Some("the tenant is empty".to_string());
        }
        None
    }
}

/// Rows merged from any number of reports: the anchors' view, in memory (anchors keep theirs
/// in SQLite with the same rule; this is the reference the property tests and the simulation
/// use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageLedger {
    rows: BTreeMap<UsageKey, UsageCounters>,
}

impl UsageLedger {
    /// An empty ledger.
    pub fn new() -> UsageLedger {
        UsageLedger::default()
    }

    /// Merges one reported row (per-field max with what the ledger holds). Returns whether the
    /// ledger changed.
    pub fn merge(&mut self, row: &UsageRow) -> bool {
        match self.rows.get_mut(&row.key()) {
            Some(held) => held.merge(&row.counters),
            None => {
                self.rows.insert(row.key(), row.counters);
                true
            }
        }
    }

    /// The counters of one row.
    pub fn get(&self, key: &UsageKey) -> Option<&UsageCounters> {
        self.rows.get(key)
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every row, by key.
    pub fn rows(&self) -> impl Iterator<Item = UsageRow> + '_ {
        self.rows.iter().map(|(k, c)| UsageRow {
            node_id: k.node_id.clone(),
            tenant: k.tenant.clone(),
            hour_ms: k.hour_ms,
            counters: *c,
        })
    }

    /// `tenant`'s totals per period of `range` (see [`period_totals`]).
    pub fn totals(&self, tenant: &str, range: &UsageRange) -> Vec<PeriodTotals> {
        let rows: Vec<UsageRow> = self.rows().filter(|r| r.tenant == tenant).collect();
        period_totals(&rows, tenant, range)
    }
}

/// How finely a range is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One period per hour.
    Hour,
    /// One period per UTC day.
    Day,
}

impl Granularity {
    /// Length of one period.
    pub fn period_ms(self) -> u64 {
        match self {
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    /// Start of the period `ms` falls in.
    pub fn period_of(self, ms: u64) -> u64 {
        ms - ms % self.period_ms()
    }

    /// Longest range at this granularity.
    pub fn max_range_ms(self) -> u64 {
        match self {
            Granularity::Hour => MAX_HOURLY_RANGE_MS,
            Granularity::Day => MAX_DAILY_RANGE_MS,
        }
    }

    /// `hour` or `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// Parses `hour` or `day`.
    pub fn parse(raw: &str) -> Option<Granularity> {
        match raw {
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }
}

/// Why a range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// `from` is not before `to`.
    #[error("`from` ({from_ms} ms) must be before `to` ({to_ms} ms)")]
    Empty {
        /// Start asked for.
        from_ms: u64,
        /// End asked for.
        to_ms: u64,
    },
    /// Longer than the granularity allows.
    #[error(
        "the range is {days} days long; at granularity {granularity} at most {max_days} days \
         are answered: narrow `from`/`to`, or ask for granularity=day"
    )]
    TooLong {
        /// Length asked for, days (rounded up).
        days: u64,
        /// The granularity.
        granularity: &'static str,
        /// The limit, days.
        max_days: u64,
    },
}

/// A validated range of whole periods: `from_ms` is rounded down to the start of its period and
/// `to_ms` up to the end of its period, so a range always covers whole hours or days (UTC), and
/// a row counts when its hour lies in `from_ms..to_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRange {
    /// First period's start, Unix ms.
    pub from_ms: u64,
    /// End of the last period (exclusive), Unix ms.
    pub to_ms: u64,
    /// Period length.
    pub granularity: Granularity,
}

impl UsageRange {
    /// Aligns `from_ms..to_ms` to whole periods and checks it against the limits.
    pub fn new(
        from_ms: u64,
        to_ms: u64,
        granularity: Granularity,
    ) -> Result<UsageRange, RangeError> {
        if from_ms >= to_ms {
            return Err(RangeError::Empty { from_ms, to_ms });
        }
        let period = granularity.period_ms();
        let from = granularity.period_of(from_ms);
        let to = to_ms.div_ceil(period).saturating_mul(period);
        if to - from > granularity.max_range_ms() {
            return Err(RangeError::TooLong {
                days: (to - from).div_ceil(DAY_MS),
                granularity: granularity.as_str(),
                max_days: granularity.max_range_ms() / DAY_MS,
            });
        }
        Ok(UsageRange {
            from_ms: from,
            to_ms: to,
            granularity,
        })
    }

    /// Whether a row of hour `hour_ms` falls in the range.
    pub fn contains(&self, hour_ms: u64) -> bool {
        (self.from_ms..self.to_ms).contains(&hour_ms)
    }

    /// Start of every period of the range, in order.
    pub fn periods(&self) -> impl Iterator<Item = u64> + '_ {
        (self.from_ms..self.to_ms).step_by(self.granularity.period_ms() as usize)
    }
}

/// Sums of one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodTotals {
    /// Start of the period, Unix ms.
    pub period_start_ms: u64,
    /// Sums of the rows in the period.
    pub counters: UsageCounters,
    /// Distinct nodes that ran in the period (a row with node-seconds: the tenant's own nodes,
    /// not anchors that only answered its API calls).
    pub nodes: u64,
}

/// `tenant`'s totals in each period of `range` that has rows, in order: sums of the rows whose
/// hour lies in the period, and how many distinct nodes ran in it (rows with node-seconds). Rows of other tenants
/// and outside the range are ignored. Each row must be a distinct key (as a ledger or a table
/// with the row key as primary key holds them).
pub fn period_totals(rows: &[UsageRow], tenant: &str, range: &UsageRange) -> Vec<PeriodTotals> {
    let mut periods: BTreeMap<u64, (UsageCounters, BTreeSet<&str>)> = BTreeMap::new();
    for row in rows
        .iter()
        .filter(|r| r.tenant == tenant && range.contains(r.hour_ms))
    {
        let (sum, nodes) = periods
            .entry(range.granularity.period_of(row.hour_ms))
            .or_default();
        sum.add(&row.counters);
        if row.counters.node_seconds > 0 {
            nodes.insert(&row.node_id);
        }
    }
    periods
        .into_iter()
        .map(|(start, (counters, nodes))| PeriodTotals {
            period_start_ms: start,
            counters,
            nodes: nodes.len() as u64,
        })
        .collect()
}

/// The sum of `periods` (distinct nodes over the whole range cannot be derived from per-period
/// counts: the caller counts them).
pub fn sum_periods(periods: &[PeriodTotals]) -> UsageCounters {
    let mut total = UsageCounters::default();
    for p in periods {
        total.add(&p.counters);
    }
    total
}

/// The data plane's monotonic totals since it started, as [`Meter::traffic`] reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Flows opened.
    pub flows_opened: u64,
}

/// A node's meter: its own rows, cumulative, and which of them grew since they were last
/// handed out for storage.
#[derive(Debug, Clone)]
pub struct Meter {
    node_id: String,
    rows: BTreeMap<(String, u64), UsageCounters>,
    changed: BTreeSet<(String, u64)>,
    traffic: TrafficTotals,
}

impl Meter {
    /// A meter for node `node_id` that continues `restored` (its rows as last stored; rows of
    /// other nodes are ignored). The data plane's totals are taken to start from zero, as they
    /// do when the node process starts.
    pub fn new(node_id: impl Into<String>, restored: impl IntoIterator<Item = UsageRow>) -> Meter {
        let node_id = node_id.into();
        let mut rows: BTreeMap<(String, u64), UsageCounters> = BTreeMap::new();
        for row in restored.into_iter().filter(|r| r.node_id == node_id) {
            rows.entry((row.tenant, row.hour_ms))
                .or_default()
                .merge(&row.counters);
        }
        Meter {
            node_id,
            rows,
            changed: BTreeSet::new(),
            traffic: TrafficTotals::default(),
        }
    }

    /// The node this meter counts for.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Adds `increment` to `tenant`'s row of the hour `at_ms` falls in.
    pub fn add(&mut self, tenant: &str, at_ms: u64, increment: &UsageCounters) {
        if increment.is_zero() {
            return;
        }
        let key = (tenant.to_string(), hour_of(at_ms));
        self.rows.entry(key.clone()).or_default().add(increment);
        self.changed.insert(key);
    }

    /// One API call answered for a caller of `tenant` at `at_ms`.
    pub fn api_call(&mut self, tenant: &str, at_ms: u64) {
        self.add(tenant, at_ms, &UsageCounters::API_CALL);
    }

    /// The data plane's totals as read at `at_ms`: what they grew by since the last reading is
    /// `tenant`'s. A total below the last reading means the data plane started over (a new
    /// engine counts from zero): everything it shows now is new.
    pub fn traffic(&mut self, tenant: &str, at_ms: u64, now: TrafficTotals) {
        let delta = |now: u64, last: u64| if now >= last { now - last } else { now };
        let increment = UsageCounters {
            bytes: delta(now.rx_bytes, self.traffic.rx_bytes),
            connections: delta(now.flows_opened, self.traffic.flows_opened),
            ..UsageCounters::default()
        };
        self.traffic = now;
        self.add(tenant, at_ms, &increment);
    }

    /// The node ran from `from_ms` to `to_ms`: each hour in between is credited the whole
    /// seconds (UTC second marks) crossed in it, so consecutive intervals add up exactly and
    /// no hour gets more than 3600.
    pub fn ran(&mut self, tenant: &str, from_ms: u64, to_ms: u64) {
        let mut start = from_ms;
        while start < to_ms {
            let end = to_ms.min(hour_of(start) + HOUR_MS);
            let seconds = end / 1000 - start / 1000;
            if seconds > 0 {
                let key = (tenant.to_string(), hour_of(start));
                let row = self.rows.entry(key.clone()).or_default();
                let room = MAX_NODE_SECONDS.saturating_sub(row.node_seconds);
                if room > 0 {
                    row.node_seconds += seconds.min(room);
                    self.changed.insert(key);
                }
            }
            start = end;
        }
    }

    /// The rows that grew since the last call, with their cumulative values, by tenant and
    /// hour. The caller stores them; until it calls again they count as handed out.
    pub fn take_changed(&mut self) -> Vec<UsageRow> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .filter_map(|key| {
                let counters = *self.rows.get(&key)?;
                Some(UsageRow {
                    node_id: self.node_id.clone(),
                    tenant: key.0,
                    hour_ms: key.1,
                    counters,
                })
            })
            .collect()
    }

    /// Puts rows back as changed (their storage failed: the next [`Meter::take_changed`]
    /// hands them out again).
    pub fn unsaved(&mut self, rows: &[UsageRow]) {
        for row in rows {
            self.changed.insert((row.tenant.clone(), row.hour_ms));
        }
    }

    /// One row's counters.
    pub fn row(&self, tenant: &str, hour_ms: u64) -> Option<UsageCounters> {
        self.rows.get(&(tenant.to_string(), hour_ms)).copied()
    }

    /// Forgets rows of hours before `hour_ms` that are not waiting to be handed out (they are
    /// stored; increments only ever go to the current hour), so the meter stays small.
    pub fn forget_before(&mut self, hour_ms: u64) {
        let changed = &self.changed;
        self.rows
            .retain(|key, _| key.1 >= hour_ms || changed.contains(key));
    }

    /// Rows held in memory.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: u64 = HOUR_MS;
    /// 2025-01-01T00:00:00Z.
    const T0: u64 = 1_735_689_600_000;

    fn row(node: &str, tenant: &str, hour_ms: u64, c: [u64; 4]) -> UsageRow {
        UsageRow {
            node_id: node.into(),
            tenant: tenant.into(),
            hour_ms,
            counters: UsageCounters {
                bytes: c[0],
                connections: c[1],
                api_calls: c[2],
                node_seconds: c[3],
            },
        }
    }

    #[test]
    fn merge_takes_the_larger_value_of_each_field() {
        let mut a = row("n", "t", T0, [5, 1, 9, 100]).counters;
        let b = row("n", "t", T0, [7, 0, 9, 50]).counters;
        assert!(a.merge(&b));
        assert_eq!(a, row("n", "t", T0, [7, 1, 9, 100]).counters);
        assert!(
            !a.merge(&b),
            "merging the same report again changes nothing"
        );
        assert!(a.covers(&b));
    }

    #[test]
    fn the_meter_counts_into_the_hour_of_each_increment() {
        let mut meter = Meter::new("n1", []);
        meter.api_call("acme", T0 + 10);
        meter.api_call("acme", T0 + H - 1);
        meter.api_call("acme", T0 + H);
        meter.api_call("globex", T0 + 5);
        let rows = meter.take_changed();
        assert_eq!(rows.len(), 3);
        assert_eq!(meter.row("acme", T0).unwrap().api_calls, 2);
        assert_eq!(meter.row("acme", T0 + H).unwrap().api_calls, 1);
        assert_eq!(meter.row("globex", T0).unwrap().api_calls, 1);
        assert!(meter.take_changed().is_empty(), "nothing grew since");
        meter.api_call("acme", T0 + H + 1);
        let rows = meter.take_changed();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].counters.api_calls, 2, "cumulative, not the delta");
    }

    #[test]
    fn node_seconds_split_at_hour_boundaries_and_add_up_exactly() {
        let mut meter = Meter::new("n1", []);
        // Ticks every 700 ms from 10 s before the hour to 10 s after.
        let mut at = T0 + H - 10_000;
        while at < T0 + H + 10_000 {
            meter.ran("acme", at, at + 700);
            at += 700;
        }
        let before = meter.row("acme", T0).unwrap().node_seconds;
        let after = meter.row("acme", T0 + H).unwrap().node_seconds;
        assert_eq!(before, 10);
        assert_eq!(before + after, (at - (T0 + H - 10_000)) / 1000);
        // A whole day in one call: 3600 per hour, never more.
        let mut meter = Meter::new("n1", []);
        meter.ran("acme", T0, T0 + 24 * H);
        let rows = meter.take_changed();
        assert_eq!(rows.len(), 24);
        assert!(rows.iter().all(|r| r.counters.node_seconds == 3600));
        meter.ran("acme", T0, T0 + H);
        assert!(meter.take_changed().is_empty(), "an hour cannot hold more");
    }

    #[test]
    fn traffic_deltas_survive_a_restart_of_the_totals() {
        let mut meter = Meter::new("n1", []);
        let at = |rx, flows| TrafficTotals {
            rx_bytes: rx,
            flows_opened: flows,
        };
        meter.traffic("acme", T0, at(1000, 3));
        meter.traffic("acme", T0 + 1, at(1500, 3));
        // The data plane started over: its totals count from zero again.
        meter.traffic("acme", T0 + 2, at(200, 1));
        meter.traffic("acme", T0 + 3, at(250, 2));
        let row = meter.row("acme", T0).unwrap();
        assert_eq!(row.bytes, 1750);
        assert_eq!(row.connections, 5);
    }

    #[test]
    fn a_restarted_meter_continues_its_rows() {
        let mut meter = Meter::new("n1", []);
        meter.ran("acme", T0, T0 + 30_000);
        meter.api_call("acme", T0 + 1);
        let stored = meter.take_changed();
        // Another node's row in the same table is not this meter's.
        let mut restored = stored.clone();
        restored.push(row("n2", "acme", T0, [0, 0, 99, 99]));
        let mut meter = Meter::new("n1", restored);
        meter.api_call("acme", T0 + 40_000);
        meter.ran("acme", T0 + 40_000, T0 + 50_000);
        let row = meter.row("acme", T0).unwrap();
        assert_eq!(row.api_calls, 2);
        assert_eq!(row.node_seconds, 40);
        meter.forget_before(T0 + H);
        assert_eq!(meter.len(), 1, "a changed row stays until it is handed out");
        meter.take_changed();
        meter.forget_before(T0 + H);
        assert!(meter.is_empty());
    }

    #[test]
    fn ranges_align_to_whole_periods_and_are_capped() {
        let r = UsageRange::new(T0 + 90, T0 + H + 1, Granularity::Hour).unwrap();
        assert_eq!((r.from_ms, r.to_ms), (T0, T0 + 2 * H));
        assert_eq!(r.periods().count(), 2);
        let d = UsageRange::new(T0 + 5 * H, T0 + 6 * H, Granularity::Day).unwrap();
        assert_eq!((d.from_ms, d.to_ms), (T0, T0 + DAY_MS));
        assert!(matches!(
            UsageRange::new(T0, T0, Granularity::Hour),
            Err(RangeError::Empty { .. })
        ));
        let err = UsageRange::new(T0, T0 + 32 * DAY_MS, Granularity::Hour).unwrap_err();
        assert!(err.to_string().contains("granularity=day"), "{err}");
        assert!(UsageRange::new(T0, T0 + 32 * DAY_MS, Granularity::Day).is_ok());
    }

    #[test]
    fn period_totals_sum_rows_and_count_distinct_nodes() {
        let rows = vec![
            row("n1", "acme", T0, [10, 1, 2, 3600]),
            row("n2", "acme", T0, [20, 2, 3, 1800]),
            row("n1", "acme", T0 + H, [5, 0, 1, 3600]),
            row("n1", "globex", T0, [999, 9, 9, 9]),
            row("n1", "acme", T0 + 30 * H, [1, 1, 1, 1]),
            // An anchor that answered acme's API calls is not one of acme's nodes.
            row("anchor", "acme", T0, [0, 0, 4, 0]),
        ];
        let hourly = UsageRange::new(T0, T0 + 2 * H, Granularity::Hour).unwrap();
        let p = period_totals(&rows, "acme", &hourly);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].period_start_ms, T0);
        assert_eq!(p[0].counters, row("", "", 0, [30, 3, 9, 5400]).counters);
        assert_eq!(p[0].nodes, 2);
        assert_eq!(p[1].nodes, 1);
        assert_eq!(p[0].counters.node_hours(), 1.5);
        let daily = UsageRange::new(T0, T0 + 2 * DAY_MS, Granularity::Day).unwrap();
        let d = period_totals(&rows, "acme", &daily);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].counters, row("", "", 0, [35, 3, 10, 9000]).counters);
        assert_eq!(d[0].nodes, 2);
        assert_eq!(d[1].period_start_ms, T0 + DAY_MS);
        assert_eq!(
            sum_periods(&d),
            row("", "", 0, [36, 4, 11, 9001]).counters,
            "the total is the sum of the periods"
        );
    }

    #[test]
    fn reports_are_checked() {
        let now = T0 + 10 * H;
        assert_eq!(row("n", "t", T0, [1, 1, 1, 3600]).problem(now), None);
        assert!(row("n", "t", T0 + 1, [0; 4]).problem(now).is_some());
        assert!(row("n", "t", now + 2 * H, [0; 4]).problem(now).is_some());
        assert!(row("n", "t", T0, [0, 0, 0, 3601]).problem(now).is_some());
        assert!(row("n", "", T0, [0; 4]).problem(now).is_some());
    }

    #[test]
    fn rows_travel_as_flat_json() {
        let r = row("n1", "acme", T0, [1, 2, 3, 4]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"node_id": "n1", "tenant": "acme", "hour_ms": T0,
                "bytes": 1, "connections": 2, "api_calls": 3, "node_seconds": 4})
        );
        assert_eq!(serde_json::from_value::<UsageRow>(json).unwrap(), r);
    }

    /// One increment on one node: (node index, tenant index, hour index, kind, amount).
    fn increments() -> impl Strategy<Value = Vec<(usize, usize, u64, u8, u64)>> {
        proptest::collection::vec((0..3usize, 0..2usize, 0..3u64, 0..4u8, 1..1000u64), 1..60)
    }

    proptest! {
        /// Nodes meter increments and report snapshots of their rows along the way; the
        /// anchor gets any subset of the snapshots, in any order, with duplicates, and at least
        /// each node's last one. Its totals are exactly the sums of the increments, and equal
        /// to what an anchor that received every snapshot once, in order, holds.
        #[test]
        fn any_interleaving_or_duplication_of_reports_gives_the_same_totals(
            incs in increments(),
            snapshot_every in 1..8usize,
            delivery in proptest::collection::vec((any::<proptest::sample::Index>(), 1..3usize), 0..80),
        ) {
            let tenants = ["acme", "globex"];
            let mut meters: Vec<Meter> = (0..3).map(|n| Meter::new(format!("n{n}"), [])).collect();
            let mut expected: BTreeMap<(String, u64), UsageCounters> = BTreeMap::new();
            let mut reports: Vec<UsageRow> = Vec::new();
            for (i, (node, tenant, hour, kind, amount)) in incs.iter().enumerate() {
                let at = T0 + hour * H + (i as u64 % 1000);
                let tenant = tenants[*tenant];
                let inc = match kind {
                    0 => UsageCounters { bytes: *amount, ..Default::default() },
                    1 => UsageCounters { connections: *amount, ..Default::default() },
                    2 => UsageCounters { api_calls: *amount, ..Default::default() },
                    _ => UsageCounters { node_seconds: amount % 10, ..Default::default() },
                };
                meters[*node].add(tenant, at, &inc);
                expected.entry((tenant.to_string(), hour_of(at))).or_default().add(&inc);
                if i % snapshot_every == 0 {
                    reports.extend(meters[*node].take_changed());
                }
            }
            // Every node's final rows are reported at least once.
            for meter in &mut meters {
                reports.extend(meter.take_changed());
            }
            let mut in_order = UsageLedger::new();
            for r in &reports {
                in_order.merge(r);
            }
            // Any order, any duplicates, then the final reports (which a node re-sends until an
            // anchor acknowledges them) in reverse.
            let mut shuffled = UsageLedger::new();
            // (An empty report list: every increment was zero.)
            for (index, times) in delivery.iter().filter(|_| !reports.is_empty()) {
                let r = &reports[index.index(reports.len())];
                for _ in 0..*times {
                    shuffled.merge(r);
                }
            }
            for r in reports.iter().rev() {
                shuffled.merge(r);
                shuffled.merge(r);
            }
            prop_assert_eq!(&shuffled, &in_order);
            let range = UsageRange::new(T0, T0 + 3 * H, Granularity::Hour).unwrap();
            for tenant in tenants {
                let totals = sum_periods(&shuffled.totals(tenant, &range));
                let mut want = UsageCounters::default();
                for ((t, _), c) in &expected {
                    if t == tenant {
                        want.add(c);
                    }
                }
                prop_assert_eq!(totals, want);
            }
        }
    }
}
