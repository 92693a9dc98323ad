//! `GET /v1/tenants/{id}/usage`: a tenant's usage (NCC-TN-003) as the answering anchor rolled
//! it up from every node's reports, per hour or per day, as JSON or as CSV for billing.
//!
//! - `from`, `to`: RFC 3339 (`2025-01-01T00:00:00Z`) or Unix milliseconds; default the last
//!   24 hours up to now. The range is widened to whole periods (UTC) and capped at 31 days at
//!   `granularity=hour` (the default) and 366 days at `granularity=day`.
//! - `format=csv` or `Accept: text/csv`: CSV with the header
//!   `tenant,period_start,period_end,bytes,connections,api_calls,node_hours,nodes`, one line per
//!   period; `format=json` (the default) the [`UsageReport`].
//! - Every period of the range is listed, those without usage with zeros.
//! - Who: a fleet admin for any tenant (also one that no longer exists: its usage stays
//!   readable for billing), a tenant's callers for their own; another tenant's is 404, as for
//!   every tenant-scoped read. Only anchors hold the roll-up: other nodes answer 421.
//!
//! This module also decides which tenant an API call is billed to ([`billed_tenant`]).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nexus_crdt::usage::{Granularity, PeriodTotals, UsageCounters, UsageRange};
use serde::{Deserialize, Serialize};

use crate::wire::{Caller, ErrorBody};
use crate::{ApiError, Shared};

/// Default range: the last 24 hours.
pub const DEFAULT_RANGE_MS: u64 = 24 * 3_600_000;
/// The CSV header row.
pub const CSV_HEADER: &str =
    "tenant,period_start,period_end,bytes,connections,api_calls,node_hours,nodes";

/// What the backend adds up for a range: the periods that have rows, and the distinct nodes
/// over the whole range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    /// Sums per period that has rows, in order.
    pub periods: Vec<PeriodTotals>,
    /// Distinct nodes that ran anywhere in the range.
    pub nodes: u64,
}

/// Sums of one period, or of the whole range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageSums {
    /// Data-plane bytes the tenant's nodes received.
    pub bytes: u64,
    /// Data-plane flows (connections) they opened.
    pub connections: u64,
    /// API requests answered for the tenant's callers.
    pub api_calls: u64,
    /// Seconds the tenant's nodes ran.
    pub node_seconds: u64,
    /// `node_seconds` / 3600.
    pub node_hours: f64,
    /// Distinct nodes of the tenant that ran in the period (anchors that only answered its API
    /// calls are not counted).
    pub nodes: u64,
}

impl UsageSums {
    fn of(counters: &UsageCounters, nodes: u64) -> UsageSums {
        UsageSums {
            bytes: counters.bytes,
            connections: counters.connections,
            api_calls: counters.api_calls,
            node_seconds: counters.node_seconds,
            node_hours: counters.node_hours(),
            nodes,
        }
    }
}

/// One period's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsagePeriod {
    /// Start of the period (RFC 3339, UTC).
    pub period_start: String,
    /// End of the period, exclusive.
    pub period_end: String,
    /// Data-plane bytes received.
    pub bytes: u64,
    /// Data-plane flows opened.
    pub connections: u64,
    /// API requests answered.
    pub api_calls: u64,
    /// Seconds the tenant's nodes ran.
    pub node_seconds: u64,
    /// `node_seconds` / 3600.
    pub node_hours: f64,
    /// Distinct nodes of the tenant that ran in the period (anchors that only answered its API
    /// calls are not counted).
    pub nodes: u64,
}

/// `GET /v1/tenants/{id}/usage` as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// The tenant.
    pub tenant: String,
    /// Start of the first period (RFC 3339).
    pub from: String,
    /// End of the last period, exclusive.
    pub to: String,
    /// `hour` or `day`.
    pub granularity: String,
    /// Every period of the range, in order (zeros where nothing was used).
    pub periods: Vec<UsagePeriod>,
    /// The whole range (`nodes`: distinct over the range).
    pub total: UsageSums,
}

/// Query of `GET /v1/tenants/{id}/usage`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
    format: Option<String>,
}

/// RFC 3339, UTC, seconds precision (periods start on whole hours).
pub fn rfc3339(ms: u64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Times from 9999-01-01 on are refused, so every period of an answer (a range is rounded out to
/// whole days at most) is still a year RFC 3339 can write.
const LATEST_MS: u64 = 253_370_764_800_000;

/// A time parameter: Unix milliseconds (digits only) or RFC 3339.
pub fn parse_time(param: &str, raw: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "{param} must be an RFC 3339 time (2025-01-01T00:00:00Z) or Unix milliseconds, got \
             {raw:?}"
        ))
    };
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms < LATEST_MS)
            .ok_or_else(bad);
    }
    let t = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .ok()
        .filter(|ms| *ms < LATEST_MS)
        .ok_or_else(bad)
}

/// A tenant id as the configuration accepts it: 1 to 63 of `A-Za-z0-9._-`.
fn valid_tenant(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The tenant an API call is billed to: a caller confined to a tenant (its keys, its OIDC
/// users, its nodes' certificates) bills its tenant; a fleet admin bills the tenant it names
/// with `?tenant=` (acting for that tenant, e.g. `nexus routes list --tenant acme`), and nobody
/// otherwise.
pub fn billed_tenant(caller: &Caller, query: Option<&str>) -> Option<String> {
    if let Some(tenant) = &caller.tenant {
        return Some(tenant.clone());
    }
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "tenant")
        .map(|(_, value)| value)
        .filter(|value| valid_tenant(value))
        .map(str::to_string)
}

/// The CSV of `report`, header first.
pub fn csv(report: &UsageReport) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for p in &report.periods {
        out.push_str(&format!(
            "{},{},{},{},{},{},{:.6},{}\n",
            report.tenant,
            p.period_start,
            p.period_end,
            p.bytes,
            p.connections,
            p.api_calls,
            p.node_hours,
            p.nodes
        ));
    }
    out
}

/// Every period of `range`, zeros where `totals` has none.
pub fn report(tenant: &str, range: &UsageRange, totals: &UsageTotals) -> UsageReport {
    let period = range.granularity.period_ms();
    let mut held = totals.periods.iter().peekable();
    let mut periods = Vec::new();
    for start in range.periods() {
        while held.peek().is_some_and(|p| p.period_start_ms < start) {
            held.next();
        }
        let (counters, nodes) = match held.peek() {
            Some(p) if p.period_start_ms == start => (p.counters, p.nodes),
            _ => (UsageCounters::default(), 0),
        };
        let sums = UsageSums::of(&counters, nodes);
        periods.push(UsagePeriod {
            period_start: rfc3339(start),
            period_end: rfc3339(start + period),
            bytes: sums.bytes,
            connections: sums.connections,
            api_calls: sums.api_calls,
            node_seconds: sums.node_seconds,
            node_hours: sums.node_hours,
            nodes: sums.nodes,
        });
    }
    let total = nexus_crdt::usage::sum_periods(&totals.periods);
    UsageReport {
        tenant: tenant.to_string(),
        from: rfc3339(range.from_ms),
        to: rfc3339(range.to_ms),
        granularity: range.granularity.as_str().to_string(),
        periods,
        total: UsageSums::of(&total, totals.nodes),
    }
}

/// The validated range of a query, `now_ms` being the default end.
fn range_of(query: &UsageQuery, now_ms: u64) -> Result<UsageRange, ApiError> {
    let granularity = match query.granularity.as_deref() {
        None => Granularity::Hour,
        Some(raw) => Granularity::parse(raw).ok_or_else(|| {
            ApiError::bad_request(format!("granularity must be hour or day, got {raw:?}"))
        })?,
    };
    let to = match query.to.as_deref() {
        Some(raw) => parse_time("to", raw)?,
        None => now_ms,
    };
    let from = match query.from.as_deref() {
        Some(raw) => parse_time("from", raw)?,
        None => to.saturating_sub(DEFAULT_RANGE_MS),
    };
    UsageRange::new(from, to, granularity).map_err(|err| ApiError::bad_request(err.to_string()))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/usage",
    tag = "tenants",
    summary = "A tenant's usage per hour or day: traffic, connections, API calls, node-hours (anchors)",
    params(
        ("id" = String, Path, description = "Tenant id.", pattern = "^[A-Za-z0-9._-]{1,63}$"),
        ("from" = Option<String>, Query, description = "Start: RFC 3339 (`2025-01-01T00:00:00Z`) or Unix milliseconds; rounded down to its period. Default: 24 hours before `to`."),
        ("to" = Option<String>, Query, description = "End (exclusive): RFC 3339 or Unix milliseconds; rounded up to a whole period. Default: now."),
        ("granularity" = Option<String>, Query, description = "`hour` (default; at most 31 days) or `day` (at most 366 days).", pattern = "^(hour|day)$"),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv` (also chosen by `Accept: text/csv`).", pattern = "^(json|csv)$"),
    ),
    responses(
        (status = 200, description = "Every period of the range (zeros where nothing was used) and the total; CSV: `tenant,period_start,period_end,bytes,connections,api_calls,node_hours,nodes`, one line per period.", content((UsageReport = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad tenant id, time, granularity or format, an empty range or one too long; the message names the parameter.", body = ErrorBody),
        (status = 404, description = "Another tenant's usage (a caller confined to a tenant sees its own only).", body = ErrorBody),
        (status = 421, description = "This node is not an anchor: anchors roll usage up; ask one (`GET /v1/nodes` shows them).", body = ErrorBody),
    ),
)]
pub(crate) async fn usage(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    if !valid_tenant(&id) {
        return Err(ApiError::bad_request(format!(
            "tenant id must be 1 to 63 of A-Z a-z 0-9 . _ -, got {id:?}"
        )));
    }
    if let Some(own) = caller.as_ref().and_then(|c| c.0.tenant.as_deref())
        && own != id
    {
        return Err(ApiError::not_found(format!("no tenant {id:?}")));
    }
    let Query(query) = query.map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; this route accepts from, to, granularity and format",
            err.body_text()
        ))
    })?;
    let as_csv = match query.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be json or csv, got {other:?}"
            )));
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv")),
    };
    let range = range_of(&query, crate::now_ms())?;
    let totals = backend.usage(&id, range).await?;
    let report = report(&id, &range, &totals);
    if as_csv {
        let name = format!(
            "attachment; filename=\"usage-{id}-{}.csv\"",
            report.from.replace(':', "")
        );
        return Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, name),
            ],
            csv(&report),
        )
            .into_response());
    }
    Ok(Json(report).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z
    const H: u64 = 3_600_000;

    fn caller(role: &str, tenant: Option<&str>) -> Caller {
        Caller {
            identity: "api-key:k".into(),
            role: role.into(),
            tenant: tenant.map(str::to_string),
        }
    }

    #[test]
    fn times_are_rfc3339_or_unix_ms() {
        assert_eq!(parse_time("from", "2025-01-01T00:00:00Z").unwrap(), T0);
        assert_eq!(parse_time("from", "2025-01-01T01:00:00+01:00").unwrap(), T0);
        assert_eq!(parse_time("from", &T0.to_string()).unwrap(), T0);
        for bad in [
            "",
            "yesterday",
            "2025-13-01T00:00:00Z",
            "99999999999999999999",
        ] {
            let err = parse_time("from", bad).unwrap_err();
            assert!(err.message.starts_with("from must be"), "{}", err.message);
        }
        assert_eq!(rfc3339(T0), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn ranges_default_to_the_last_day_and_are_validated() {
        let now = T0 + 30 * H + 5;
        let r = range_of(&UsageQuery::default(), now).unwrap();
        assert_eq!((r.from_ms, r.to_ms), (T0 + 6 * H, T0 + 31 * H));
        let q = UsageQuery {
            granularity: Some("week".into()),
            ..Default::default()
        };
        assert!(
            range_of(&q, now)
                .unwrap_err()
                .message
                .contains("granularity")
        );
        let q = UsageQuery {
            granularity: Some(String::new()),
            ..Default::default()
        };
        assert!(range_of(&q, now).is_err(), "empty is not absent");
        let q = UsageQuery {
            from: Some(T0.to_string()),
            to: Some((T0 + 40 * 24 * H).to_string()),
            ..Default::default()
        };
        assert!(range_of(&q, now).unwrap_err().message.contains("31 days"));
        let q = UsageQuery {
            from: Some((T0 + H).to_string()),
            to: Some(T0.to_string()),
            ..Default::default()
        };
        assert!(range_of(&q, now).unwrap_err().message.contains("before"));
    }

    #[test]
    fn reports_list_every_period_and_csv_has_its_header() {
        let range = UsageRange::new(T0, T0 + 3 * H, Granularity::Hour).unwrap();
        let counters = UsageCounters {
            bytes: 100,
            connections: 2,
            api_calls: 7,
            node_seconds: 5400,
        };
        let totals = UsageTotals {
            periods: vec![PeriodTotals {
                period_start_ms: T0 + H,
                counters,
                nodes: 2,
            }],
            nodes: 2,
        };
        let r = report("acme", &range, &totals);
        assert_eq!(r.periods.len(), 3);
        assert_eq!(r.periods[0].api_calls, 0);
        assert_eq!(r.periods[1].api_calls, 7);
        assert_eq!(r.periods[1].period_start, "2025-01-01T01:00:00Z");
        assert_eq!(r.periods[1].period_end, "2025-01-01T02:00:00Z");
        assert_eq!(r.total.node_hours, 1.5);
        assert_eq!(r.total.nodes, 2);
        let text = csv(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(
            lines[2],
            "acme,2025-01-01T01:00:00Z,2025-01-01T02:00:00Z,100,2,7,1.500000,2"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn calls_are_billed_to_the_callers_tenant_or_the_one_a_fleet_admin_names() {
        let viewer = caller("viewer", Some("acme"));
        assert_eq!(
            billed_tenant(&viewer, Some("tenant=globex")).as_deref(),
            Some("acme")
        );
        let admin = caller("fleet-admin", None);
        assert_eq!(billed_tenant(&admin, None), None);
        assert_eq!(billed_tenant(&admin, Some("limit=5")), None);
        assert_eq!(
            billed_tenant(&admin, Some("limit=5&tenant=globex")).as_deref(),
            Some("globex")
        );
        assert_eq!(billed_tenant(&admin, Some("tenant=")), None);
        assert_eq!(billed_tenant(&admin, Some("tenant=a%20b")), None);
    }
}
