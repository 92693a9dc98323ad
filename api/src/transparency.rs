//! `/v1/transparency/*`: an anchor's certificate transparency log (RFC 6962 Merkle tree of every
//! MIC it issued and revoked). Read-only. Heads and proofs are for any authenticated caller: the
//! point of the log is that anyone in the fleet can audit it. The entries name every tenant's
//! nodes, so only a fleet admin lists them.
//!
//! - `GET /v1/transparency/sth`: the signed tree head.
//! - `GET /v1/transparency/entries?start=&end=` (fleet admin): entries `start..end` (end exclusive, at most
//!   [`MAX_LIMIT`] per call; `next_start` says where to go on), or the entries of one
//!   `serial=`, `node_id=` or `issuer=` (same shape, same paging).
//! - `GET /v1/transparency/proof/inclusion?serial=[&kind=]` or `?leaf_hash=`, optional `size=`.
//! - `GET /v1/transparency/proof/consistency?first=[&second=]`.
//!
//! This module checks the shape of each parameter (a 400 names it); the [`Backend`] checks
//! sizes against the log (400 beyond it) and answers 404 for an entry it does not hold.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;

use crate::wire::{
    ConsistencyProof, InclusionProof, InclusionTarget, SignedTreeHead, TransparencyEntries,
    TransparencyLookup,
};
use crate::{ApiError, MAX_LIMIT, Shared};

fn query<T>(query: Result<Query<T>, QueryRejection>, accepted: &str) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; this route accepts {accepted}",
            err.body_text()
        ))
    })
}

/// A whole number parameter.
fn number(param: &str, raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    raw.map(|raw| {
        // At most i64::MAX, as documented (int64): no log gets that large anyway.
        raw.parse::<u64>()
            .ok()
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{param} must be a whole number from 0 to {} (a leaf index or tree size), \
                     got {raw:?}",
                    i64::MAX
                ))
            })
    })
    .transpose()
}

/// A lowercase-hex parameter of `len` characters (`None`: any even length up to 510, a serial).
fn hex_param(param: &str, raw: &str, len: Option<usize>) -> Result<String, ApiError> {
    let hex = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = match len {
        Some(len) => hex && raw.len() == len,
        None => hex && raw.len().is_multiple_of(2) && raw.len() <= 510,
    };
    if ok {
        Ok(raw.to_ascii_lowercase())
    } else {
        let want = match len {
            Some(len) => format!("{len} hex characters"),
            None => "an even number of hex characters".to_string(),
        };
        Err(ApiError::bad_request(format!(
            "{param} must be {want}, got {raw:?}"
        )))
    }
}

fn hash_param(param: &str, raw: &str) -> Result<[u8; 32], ApiError> {
    let hex = hex_param(param, raw, Some(64))?;
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| ApiError::bad_request(format!("{param} is not hex")))?;
    }
    Ok(out)
}

#[utoipa::path(
    get,
    path = "/v1/transparency/sth",
    tag = "transparency",
    summary = "This anchor's signed tree head",
    responses(
        (status = 200, description = "The signed tree head, with what a client needs to check its signature.", body = SignedTreeHead),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn sth(State(backend): State<Shared>) -> Result<Json<SignedTreeHead>, ApiError> {
    backend.transparency_sth().await.map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntriesQuery {
    start: Option<String>,
    end: Option<String>,
    serial: Option<String>,
    node_id: Option<String>,
    issuer: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/transparency/entries",
    tag = "transparency",
    summary = "Entries of the log, or those of one serial, node or issuer",
    params(
        ("start" = Option<u64>, Query, description = "First index (default 0)."),
        ("end" = Option<u64>, Query, description = "End index, exclusive (default: the log's size)."),
        ("serial" = Option<String>, Query, description = "Only this certificate serial's entries (hex).", pattern = "^([0-9a-fA-F]{2}){1,255}$"),
        ("node_id" = Option<String>, Query, description = "Only this node's entries (32 hex characters).", pattern = "^[0-9a-fA-F]{32}$"),
        ("issuer" = Option<String>, Query, description = "Only this issuer's entries (SHA-256 of the anchor intermediate certificate, 64 hex characters).", pattern = "^[0-9a-fA-F]{64}$"),
    ),
    responses(
        (status = 200, description = "At most 1000 entries by index; `next_start` says where to go on.", body = TransparencyEntries),
        (status = 400, description = "A bad parameter (the message names it), `end` before `start`, `start` beyond the log, or more than one of serial, node_id and issuer.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn entries(
    State(backend): State<Shared>,
    raw: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Json<TransparencyEntries>, ApiError> {
    let q = query(raw, "start, end, and one of serial, node_id or issuer")?;
    let start = number("start", q.start.as_deref())?.unwrap_or(0);
    let end = number("end", q.end.as_deref())?;
    if let Some(end) = end
        && end < start
    {
        return Err(ApiError::bad_request(format!(
            "end ({end}) must not be smaller than start ({start}); end is exclusive"
        )));
    }
    let lookup = match (&q.serial, &q.node_id, &q.issuer) {
        (None, None, None) => TransparencyLookup::All,
        (Some(serial), None, None) => {
            TransparencyLookup::Serial(hex_param("serial", serial, None)?)
        }
        (None, Some(id), None) => TransparencyLookup::NodeId(hex_param("node_id", id, Some(32))?),
        (None, None, Some(fp)) => TransparencyLookup::Issuer(hex_param("issuer", fp, Some(64))?),
        _ => {
            return Err(ApiError::bad_request(
                "give at most one of serial, node_id and issuer",
            ));
        }
    };
    backend
        .transparency_entries(lookup, start, end, MAX_LIMIT)
        .await
        .map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InclusionQuery {
    serial: Option<String>,
    kind: Option<String>,
    leaf_hash: Option<String>,
    size: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/transparency/proof/inclusion",
    tag = "transparency",
    summary = "The audit path of one entry (RFC 6962)",
    params(
        ("serial" = Option<String>, Query, description = "The entry of this certificate serial (hex); give this or leaf_hash.", pattern = "^([0-9a-fA-F]{2}){1,255}$"),
        ("kind" = Option<String>, Query, description = "With serial: `issued` (default) or `revoked`.", pattern = "^(issued|revoked)$"),
        ("leaf_hash" = Option<String>, Query, description = "The entry with this leaf hash (64 hex characters); give this or serial.", pattern = "^[0-9a-fA-F]{64}$"),
        ("size" = Option<u64>, Query, description = "Size of the tree to prove inclusion in (default: the whole log)."),
    ),
    responses(
        (status = 200, description = "The audit path.", body = InclusionProof),
        (status = 400, description = "A bad parameter (the message names it), neither or both of serial and leaf_hash, or a size beyond the log or short of the entry.", body = crate::wire::ErrorBody),
        (status = 404, description = "The log holds no such entry.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn inclusion(
    State(backend): State<Shared>,
    raw: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Json<InclusionProof>, ApiError> {
    let q = query(
        raw,
        "serial (with kind issued or revoked) or leaf_hash, and size",
    )?;
    let size = number("size", q.size.as_deref())?;
    let target = match (&q.serial, &q.leaf_hash) {
        (Some(serial), None) => {
            let kind = match q.kind.as_deref() {
                None | Some("issued") => "issued",
                Some("revoked") => "revoked",
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "kind must be issued or revoked, got {other:?}"
                    )));
                }
            };
            InclusionTarget::Serial {
                serial: hex_param("serial", serial, None)?,
                kind: kind.to_string(),
            }
        }
        (None, Some(hash)) => {
            if q.kind.is_some() {
                return Err(ApiError::bad_request(
                    "kind goes with serial; a leaf_hash names one entry already",
                ));
            }
            InclusionTarget::LeafHash(hash_param("leaf_hash", hash)?)
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of serial and leaf_hash",
            ));
        }
    };
    backend.transparency_inclusion(target, size).await.map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsistencyQuery {
    first: Option<String>,
    second: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/transparency/proof/consistency",
    tag = "transparency",
    summary = "The proof that the log extends an older size of itself (RFC 6962)",
    params(
        ("first" = u64, Query, description = "The older tree size."),
        ("second" = Option<u64>, Query, description = "The newer tree size (default: now)."),
    ),
    responses(
        (status = 200, description = "The consistency proof.", body = ConsistencyProof),
        (status = 400, description = "A bad or missing size (the message names it), first larger than second, or a size beyond the log.", body = crate::wire::ErrorBody),
        (status = 421, description = "This node is not an anchor: send the request to an anchor (`GET /v1/nodes` shows them).", body = crate::wire::ErrorBody),
    ),
)]
pub(crate) async fn consistency(
    State(backend): State<Shared>,
    raw: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    let q = query(raw, "first and second")?;
    let first = number("first", q.first.as_deref())?
        .ok_or_else(|| ApiError::bad_request("first (the older tree size) is required"))?;
    let second = number("second", q.second.as_deref())?;
    if let Some(second) = second
        && first > second
    {
        return Err(ApiError::bad_request(format!(
            "first ({first}) must not be larger than second ({second})"
        )));
    }
    backend
        .transparency_consistency(first, second)
        .await
        .map(Json)
}
