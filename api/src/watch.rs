//! `GET /v1/watch`: changes as Server-Sent Events, resumable after a disconnect (NCC-API-009).
//!
//! ```text
//! GET /v1/watch?kinds=routes,nodes          (default: every kind)
//! Last-Event-ID: 9f0c2a61d4b7e803-41        (optional: resume after this event)
//!
//! id: 9f0c2a61d4b7e803-42
//! event: routes
//! data: {"kind":"routes","op":"upsert","id":"r1","tenant":"acme","object":{...}}
//! ```
//!
//! **Ids** are `<epoch>-<seq>`: `epoch` (16 hex digits) is chosen at random when the node's
//! process starts, `seq` counts up from 1 within it. Each node keeps its own journal, so an id
//! means something only to the node (and the run of it) that issued it.
//!
//! **Resuming.** With `Last-Event-ID`, the stream starts with every held event after that id,
//! in order, then continues live, without duplicates. When the events after the id are no
//! longer held (the node restarted, the id is another node's, it is older than the journal's
//! window, or it is not an id at all), the first event is `event: resync` with
//! `data: {"reason": "..."}`: the client must re-list what it watches. A resync carries an id
//! too, so reconnecting with it resumes from that point. A subscriber that falls so far behind
//! that its events leave the journal gets a `resync` as well; a gap is never silent.
//!
//! **Who sees what.** A caller confined to a tenant sees its tenant's objects, its tenant's
//! nodes and its own tenant record, plus the fleet-wide policies; a fleet admin sees
//! everything. A keep-alive comment goes out every [`KEEP_ALIVE`].
//!
//! **Reuse (gRPC and other transports).** The node provides an [`EventSource`] through
//! [`Backend::events`](crate::Backend::events). [`watch_stream`] turns it into a `Stream` of
//! [`WatchItem`]s after an id, with the resync semantics above and the caller's filter applied;
//! a transport only maps each item to its own message:
//!
//! ```ignore
//! let source = backend.events().ok_or(/* unavailable */)?;
//! let kinds = parse_kinds(request_kinds)?; // 400 naming an unknown kind
//! let mut items = watch_stream(&*source, last_event_id, WatchFilter::new(kinds, &caller));
//! while let Some(item) = items.next().await {
//!     match item {
//!         WatchItem::Event(event) => { /* event.id, event.kind, event.data() */ }
//!         WatchItem::Resync { id, reason } => { /* tell the client to re-list */ }
//!     }
//! }
//! ```

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::Caller;
use crate::{ApiError, Shared};

/// How often an idle stream carries a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often an open stream's credentials are checked again: a revoked or expired key (or an
/// expired OIDC token) ends its streams within this long, with an `unauthenticated` event.
pub const RECHECK: Duration = Duration::from_secs(5);

/// A stream that yields once, when the credentials stop authenticating: `(code, message)`.
pub fn credentials_lapse(
    backend: Shared,
    authorization: Option<String>,
    peer: Option<crate::PeerCertificates>,
) -> impl Stream<Item = (&'static str, String)> + Send {
    futures::stream::once(async move {
        loop {
            tokio::time::sleep(RECHECK).await;
            if let Err(err) =
                crate::auth::authenticate(&*backend, authorization.as_deref(), peer.as_ref()).await
            {
                return (err.code, err.message);
            }
        }
    })
}

/// What a watch is about: the `kinds` of `GET /v1/watch` and each event's `event:` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchKind {
    /// Fleet members: a node appears, its status or what it publishes changes, it is forgotten.
    Nodes,
    /// A tenant's route policies.
    Routes,
    /// Route policies scoped to a site (the event's `site` names it).
    SiteRoutes,
    /// Firmware targets.
    Firmware,
    /// Tenants (the event's `tenant` is the tenant itself).
    Tenants,
    /// Fleet-wide route policies (`tenant` null: every caller sees them).
    FleetPolicies,
    /// API keys.
    Keys,
}

impl WatchKind {
    /// Every kind, in the order the API lists them.
    pub const ALL: [WatchKind; 7] = [
        WatchKind::Nodes,
        WatchKind::Routes,
        WatchKind::SiteRoutes,
        WatchKind::Firmware,
        WatchKind::Tenants,
        WatchKind::FleetPolicies,
        WatchKind::Keys,
    ];

    /// The wire name (`site_routes`).
    pub fn as_str(self) -> &'static str {
        match self {
            WatchKind::Nodes => "nodes",
            WatchKind::Routes => "routes",
            WatchKind::SiteRoutes => "site_routes",
            WatchKind::Firmware => "firmware",
            WatchKind::Tenants => "tenants",
            WatchKind::FleetPolicies => "fleet_policies",
            WatchKind::Keys => "keys",
        }
    }

    /// The kind with wire name `name`.
    pub fn parse(name: &str) -> Option<WatchKind> {
        WatchKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for WatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Created or changed; `object` is its new state.
    Upsert,
    /// Gone; `object` is its last known state.
    Delete,
    /// A node's status changed; `object` is the node.
    Status,
}

/// An event's place in one node's journal: `<epoch>-<seq>` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    /// Chosen at random when the node's process started.
    pub epoch: u64,
    /// 1 for the first event of the epoch, then one more per event. A resync's id may be 0:
    /// "before the first event".
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.epoch, self.seq)
    }
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(raw: &str) -> Result<EventId, String> {
        let expected = || format!("expected <16 hex digits>-<number>, got {raw:?}");
        let (epoch, seq) = raw.trim().split_once('-').ok_or_else(expected)?;
        if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(expected());
        }
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(expected());
        }
        Ok(EventId {
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| expected())?,
            seq: seq.parse().map_err(|_| expected())?,
        })
    }
}

/// One change, as the node's journal holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvent {
    /// Its place in the journal.
    pub id: EventId,
    /// What kind of object changed.
    pub kind: WatchKind,
    /// What happened to it.
    pub op: Op,
    /// The object's id (a node's id for `nodes`).
    pub object_id: String,
    /// The tenant it belongs to; `None` for fleet-wide objects.
    pub tenant: Option<String>,
    /// The site of a site-scoped route.
    pub site: Option<String>,
    /// The object as the API lists it (for a delete: as it last was).
    pub object: Value,
}

impl WatchEvent {
    /// The JSON of the event's `data:` line.
    pub fn data(&self) -> Value {
        let mut data = serde_json::json!({
            "kind": self.kind,
            "op": self.op,
            "id": self.object_id,
            "tenant": self.tenant,
            "object": self.object,
        });
        if let (Some(site), Some(map)) = (&self.site, data.as_object_mut()) {
            map.insert("site".into(), Value::String(site.clone()));
        }
        data
    }
}

/// What a watch stream yields.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    /// The next event.
    Event(Arc<WatchEvent>),
    /// Events were lost to this subscriber: re-list, then keep reading (the stream continues
    /// after `id`).
    Resync {
        /// Where the stream continues: resuming with this id misses nothing that follows.
        id: EventId,
        /// Why, for people.
        reason: String,
    },
}

/// A stream of watch items.
pub type EventStream = Pin<Box<dyn Stream<Item = WatchItem> + Send + 'static>>;

/// A node's event journal, as the API (and any other transport) reads it.
pub trait EventSource: Send + Sync + 'static {
    /// Every event, of every kind and tenant, after `last_event_id` (`None`: from now on), then
    /// live ones as they happen, each once and in order. The stream starts with
    /// [`WatchItem::Resync`] when the events after `last_event_id` are not held (another epoch,
    /// older than the journal, ahead of it, or not an id), and yields one whenever this
    /// subscriber fell behind further than the journal reaches. It ends when the node stops.
    fn subscribe(&self, last_event_id: Option<&str>) -> EventStream;
}

/// Which events one watcher gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchFilter {
    /// The kinds asked for.
    pub kinds: BTreeSet<WatchKind>,
    /// The tenant the caller is confined to (`None`: the whole fleet).
    pub tenant: Option<String>,
}

impl WatchFilter {
    /// The filter of `kinds` for `caller`.
    pub fn new(mut kinds: BTreeSet<WatchKind>, caller: &Caller) -> WatchFilter {
        // API keys are listed to admins only; so are their events.
        if crate::auth::require(caller, crate::auth::Permission::TenantAdmin).is_err() {
            kinds.remove(&WatchKind::Keys);
        }
        WatchFilter {
            kinds,
            tenant: caller.tenant.clone(),
        }
    }

    /// Whether the watcher gets `item`. Resyncs always pass: they are about the stream.
    pub fn admits(&self, item: &WatchItem) -> bool {
        let WatchItem::Event(event) = item else {
            return true;
        };
        if !self.kinds.contains(&event.kind) {
            return false;
        }
        match &self.tenant {
            None => true,
            Some(own) => match &event.tenant {
                Some(tenant) => tenant == own,
                // Fleet-wide policies apply to every tenant; nothing else fleet-wide is shown.
                None => event.kind == WatchKind::FleetPolicies,
            },
        }
    }
}

fn valid_kinds() -> String {
    WatchKind::ALL.map(WatchKind::as_str).join(", ")
}

/// Parses `kinds` (comma-separated; absent: every kind). An unknown or empty name is a 400
/// that names it and lists the valid kinds.
pub fn parse_kinds(raw: Option<&str>) -> Result<BTreeSet<WatchKind>, ApiError> {
    let Some(raw) = raw else {
        return Ok(WatchKind::ALL.into_iter().collect());
    };
    let mut kinds = BTreeSet::new();
    for name in raw.split(',').map(str::trim) {
        match WatchKind::parse(name) {
            Some(kind) => {
                kinds.insert(kind);
            }
            None if name.is_empty() => {
                return Err(ApiError::bad_request(format!(
                    "kinds {raw:?} has an empty entry: give a comma-separated list of {}, or \
                     leave kinds out to watch everything",
                    valid_kinds()
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "unknown kind {name:?} in kinds: valid kinds are {}",
                    valid_kinds()
                )));
            }
        }
    }
    Ok(kinds)
}

/// `source`'s events after `last_event_id` that `filter` admits, with the resync semantics of
/// [`EventSource::subscribe`]. What the SSE handler serves; other transports use it as is.
pub fn watch_stream(
    source: &dyn EventSource,
    last_event_id: Option<&str>,
    filter: WatchFilter,
) -> EventStream {
    Box::pin(
        source
            .subscribe(last_event_id)
            .filter(move |item| std::future::ready(filter.admits(item))),
    )
}

/// Query of `GET /v1/watch`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// Comma-separated kinds; absent: every kind.
    kinds: Option<String>,
}

fn sse_event(item: &WatchItem) -> SseEvent {
    match item {
        WatchItem::Event(event) => SseEvent::default()
            .id(event.id.to_string())
            .event(event.kind.as_str())
            .data(event.data().to_string()),
        WatchItem::Resync { id, reason } => SseEvent::default()
            .id(id.to_string())
            .event("resync")
            .data(serde_json::json!({ "reason": reason }).to_string()),
    }
}

/// `GET /v1/watch`.
#[utoipa::path(
    get,
    path = "/v1/watch",
    tag = "watch",
    summary = "Changes as Server-Sent Events, resumable with `Last-Event-ID`",
    params(
        ("kinds" = Option<String>, Query, description = "Comma-separated kinds to watch: nodes, routes, site_routes, firmware, tenants, fleet_policies, keys (default: every kind)."),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (`<epoch>-<seq>`); when the node no longer holds what follows it, the stream starts with `event: resync`."),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`: `id: <epoch>-<seq>`, `event: <kind>` (or `resync`), `data: {\"kind\",\"op\",\"id\",\"tenant\",\"object\"}`; a keep-alive comment every 15 s.", content_type = "text/event-stream", body = String),
        (status = 400, description = "An unknown kind or query parameter; the message names it.", body = crate::wire::ErrorBody),
        (status = 503, description = "This node keeps no event journal.", body = crate::wire::ErrorBody),
    ),
)]
pub async fn watch(
    State(backend): State<Shared>,
    caller: Option<axum::Extension<Caller>>,
    peer: Option<axum::Extension<crate::PeerCertificates>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| {
        ApiError::bad_request(format!(
            "bad query string: {}; /v1/watch accepts kinds (comma-separated: {})",
            err.body_text(),
            valid_kinds()
        ))
    })?;
    let kinds = parse_kinds(query.kinds.as_deref())?;
    let caller = caller
        .map(|axum::Extension(c)| c)
        .ok_or_else(|| ApiError::internal("the caller was not recorded"))?;
    let source = backend.events().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_event_journal",
            "this node keeps no event journal: watch another node",
        )
    })?;
    // An id that is not text cannot be one of ours: it gets a resync like any other bogus id.
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let items = watch_stream(
        &*source,
        last_event_id.as_deref(),
        WatchFilter::new(kinds, &caller),
    );
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
    let lapse = credentials_lapse(backend.clone(), authorization, peer.map(|p| p.0)).map(
        |(code, message)| {
            SseEvent::default()
                .event("unauthenticated")
                .data(serde_json::json!({"code": code, "message": message}).to_string())
        },
    );
    // Events until the credentials lapse; the lapse is the stream's last event.
    let events = futures::stream::select(
        items.map(|item| (false, sse_event(&item))),
        lapse.map(|event| (true, event)),
    )
    .scan(false, |ended, (last, event)| {
        let out = (!*ended).then_some(event);
        *ended |= last;
        futures::future::ready(out)
    })
    .map(Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: WatchKind, tenant: Option<&str>) -> WatchItem {
        WatchItem::Event(Arc::new(WatchEvent {
            id: EventId { epoch: 7, seq: 1 },
            kind,
            op: Op::Upsert,
            object_id: "x".into(),
            tenant: tenant.map(str::to_string),
            site: None,
            object: Value::Null,
        }))
    }

    fn caller(tenant: Option<&str>) -> Caller {
        Caller {
            identity: "api-key:t".into(),
            role: if tenant.is_some() {
                "viewer"
            } else {
                "fleet-admin"
            }
            .into(),
            tenant: tenant.map(str::to_string),
        }
    }

    #[test]
    fn ids_round_trip_and_bogus_ones_are_refused() {
        let id = EventId {
            epoch: 0x9f0c_2a61_d4b7_e803,
            seq: 42,
        };
        assert_eq!(id.to_string(), "9f0c2a61d4b7e803-42");
        assert_eq!("9f0c2a61d4b7e803-42".parse::<EventId>(), Ok(id));
        for bogus in [
            "",
            "42",
            "abc-1",
            "9f0c2a61d4b7e803-",
            "9f0c2a61d4b7e803--1",
            "9f0c2a61d4b7e80z-1",
        ] {
            assert!(bogus.parse::<EventId>().is_err(), "{bogus:?}");
        }
    }

    #[test]
    fn kinds_default_to_all_and_unknown_ones_are_named() {
        assert_eq!(parse_kinds(None).unwrap().len(), WatchKind::ALL.len());
        assert_eq!(
            parse_kinds(Some("routes, nodes")).unwrap(),
            BTreeSet::from([WatchKind::Routes, WatchKind::Nodes])
        );
        let err = parse_kinds(Some("routes,gadgets")).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("\"gadgets\""), "{}", err.message);
        assert!(err.message.contains("fleet_policies"), "{}", err.message);
        assert!(parse_kinds(Some("routes,")).is_err());
    }

    #[test]
    fn a_tenant_sees_its_own_and_the_fleet_policies() {
        let all: BTreeSet<WatchKind> = WatchKind::ALL.into_iter().collect();
        let acme = WatchFilter::new(all.clone(), &caller(Some("acme")));
        assert!(acme.admits(&event(WatchKind::Routes, Some("acme"))));
        assert!(acme.admits(&event(WatchKind::Nodes, Some("acme"))));
        assert!(acme.admits(&event(WatchKind::FleetPolicies, None)));
        assert!(!acme.admits(&event(WatchKind::Routes, Some("globex"))));
        assert!(!acme.admits(&event(WatchKind::Tenants, Some("globex"))));
        assert!(!acme.admits(&event(WatchKind::Keys, None)));
        let resync = WatchItem::Resync {
            id: EventId { epoch: 7, seq: 0 },
            reason: "r".into(),
        };
        assert!(acme.admits(&resync));
        let admin = WatchFilter::new(all, &caller(None));
        assert!(admin.admits(&event(WatchKind::Routes, Some("globex"))));
        let routes_only = WatchFilter::new(BTreeSet::from([WatchKind::Routes]), &caller(None));
        assert!(!routes_only.admits(&event(WatchKind::Nodes, Some("acme"))));
        assert!(routes_only.admits(&resync));
    }

    #[test]
    fn data_carries_the_documented_fields() {
        let WatchItem::Event(e) = event(WatchKind::SiteRoutes, Some("acme")) else {
            unreachable!()
        };
        let mut e = (*e).clone();
        e.site = Some("lab".into());
        let data = e.data();
        assert_eq!(data["kind"], "site_routes");
        assert_eq!(data["op"], "upsert");
        assert_eq!(data["id"], "x");
        assert_eq!(data["tenant"], "acme");
        assert_eq!(data["site"], "lab");
        assert!(data.get("object").is_some());
    }
}
