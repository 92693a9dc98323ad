//! Replicated fleet configuration for Nexus Cloud: the I/O-free core.
//!
//! Configuration lives in automerge documents: one fleet document and one document per tenant
//! (invariant 5: a node holds the fleet document and its own tenant's only). This crate owns
//! the typed models, the signed changes and who may make them, validation and quarantine,
//! versions, storage bytes and the sync protocol — as pure functions and state machines. It
//! never touches a socket, a file or a clock: the node persists what it is handed, moves bytes
//! over QUIC, and passes time in, so the same code runs in `nexus-sim`.
//!
//! # Parts
//!
//! * [`model`]: [`FleetDoc`] and [`TenantDoc`] with their objects ([`RoutePolicy`],
//!   [`FirmwareTarget`], [`NodeOverride`], [`Tenant`], …), serde + autosurgeon mapped. Every
//!   collection is a map keyed by id so concurrent edits merge per object and per field.
//! * [`mod@validate`]: [`validate()`] / [`validate_tenant`] list every problem with its field path;
//!   [`effective_fleet`] / [`effective_tenant`] quarantine what is invalid after a merge,
//!   deterministically.
//! * [`SignedChange`], [`authorize`], [`may_replicate`]: the change envelope, the write rule and
//!   the read rule.
//! * [`ConfigDoc`]: a document — genesis, local writes ([`ConfigDoc::apply_local`]), pushed
//!   changes ([`ConfigDoc::apply_remote`]), heads and their digest, [`ConfigDoc::version`],
//!   save / incremental save / load, and sync ([`ConfigDoc::generate_sync_message`],
//!   [`ConfigDoc::receive_sync_message`] with a per-peer [`PeerSync`]).
//! * [`usage`]: per-tenant usage counters (rows per node, tenant and hour that only grow and
//!   merge by per-field max), the node's [`usage::Meter`] and range sums for billing.
//! * Object-level access for large documents: [`ConfigDoc::entry`],
//!   [`ConfigDoc::apply_local_entry`] and [`ConfigDoc::touched_objects`] over typed
//!   [`Collection`]s ([`ROUTES`], [`TENANTS`], …), so a write or a merge costs the objects it
//!   touches, not the document.
//!
//! # Genesis
//!
//! Two nodes that each create an empty document and then write `routes` would create two
//! conflicting `routes` maps, and the merge would hide one of them. So every document starts
//! from a *genesis* change that every node builds byte for byte the same (actor = first 16
//! bytes of SHA-256(`"nexus-genesis-v1\0"` ‖ document id), time 0, the empty collections, and
//! for a tenant document its `tenant_id`): its hash is the same everywhere, automerge treats it
//! as one change, and all later changes build on the same root objects. Genesis is the only
//! unsigned change, is never sent, and [`ConfigDoc::load`] refuses bytes without it (a tenant
//! document stored under the wrong id).
//!
//! # Signed changes
//!
//! Every change (other than genesis) travels and is stored as a [`SignedChange`]: the raw bytes
//! of exactly one automerge change, the document id (`fleet` or `tenant/<id>`), the author
//! node id, the caller (identity such as `api-key:…` or `node:<id>`, and its [`CallerRole`]),
//! the author's MIC serial, a timestamp, the change hash, and an ed25519 signature by the
//! author node's key over
//!
//! ```text
//! "nexus-change-v1\0"            domain separator (no other Nexus signature starts so)
//! lp(document id)                lp(x) = x's length as u32 big-endian, then x
//! author node id                 16 bytes
//! lp(caller identity)
//! lp(caller role)                canonical text: fleet-admin, tenant-admin:<t>, …
//! lp(MIC serial)                 lowercase hex
//! timestamp                      i64 big-endian, Unix milliseconds
//! change hash                    32 bytes
//! lp(change bytes)
//! ```
//!
//! A receiver checks, before applying or relaying: the envelope is for this document; the
//! author resolves through the node's [`AuthorDirectory`] (its MICs) to a public key whose node
//! id is the author; the signature verifies; the bytes are one change whose hash is the one
//! signed; the change's automerge actor starts with the author's node id (so nobody can put
//! changes into another node's actor sequence); and [`authorize`] accepts author and caller:
//!
//! * the fleet document: a fleet admin, through an anchor only;
//! * a tenant document: the tenant's admins and operators or a fleet admin, through an anchor
//!   or a node of that tenant; viewers never;
//! * a site-scoped writer: through a node of its site (or an anchor), and only objects keyed
//!   `<site>/…` in `site_routes` / `site_node_overrides` — checked on the change's operations
//!   (each operation's object path is resolved against the document), so a compromised edge
//!   node cannot widen its scope by crafting the change by hand.
//!
//! An envelope that fails any check is refused with a typed error and nothing is applied.
//! Relaying a forged change does not help an attacker: the relay forwards the author's
//! envelope unchanged, and every receiver checks it again.
//!
//! # Sync and how sync-received changes are verified
//!
//! automerge's sync protocol applies the changes in a sync message without any hook, which
//! would bypass every check above. Here automerge's message only negotiates (heads, needs,
//! bloom filters); the sender strips its change chunks and attaches the stored envelope of
//! each change instead ([`SyncPacket`]). The receiver refuses a message that still carries
//! chunks, checks every envelope of the packet as if it had been pushed (in order; later
//! changes may refer to objects made by earlier ones), and applies the packet only if every
//! envelope passes: one forged or unauthorized change rejects the whole packet and nothing of
//! it is applied. The sender forces automerge's version-1 messages (one chunk per change) so
//! every chunk maps to one envelope; [`SyncLimits`] bounds a packet and a large backlog takes
//! several round trips. [`PeerSync`] encodes to a few bytes (the shared heads) for persistence.
//!
//! A consequence: a node must keep the envelope of every change it holds (its change table),
//! since it may have to prove any of them to a peer that lacks it. A node bootstrapping from
//! nothing receives and verifies the whole signed history (signed checkpoints by anchors would
//! shorten that; not built).
//!
//! # Version
//!
//! [`ConfigDoc::version`] is the number of changes in the document's history, genesis
//! included. Automerge's history is a set of content-addressed changes, so nodes holding the
//! same changes hold the same number, whichever order the changes arrived in; any new change
//! raises it. Limits: it orders progress on one node, not states across nodes — two nodes with
//! different concurrent changes can both be at version 7. Equal version plus equal
//! [`ConfigDoc::heads_digest`] means equal state. Compaction ([`ConfigDoc::save`]) keeps the
//! full history, so a version never goes down across restarts.
//!
//! # Validation after merge
//!
//! Automerge resolves concurrent writes to the same field deterministically (the operation
//! with the highest id wins on every replica); a merged document can still be invalid (one
//! writer switched a route to `redirect` while another removed its target). Signed, authorized
//! changes are never rejected after the fact — every replica must hold the same history — so
//! instead every node computes the [`Effective`] configuration from the merged model: valid
//! objects are applied, invalid ones are quarantined with their reasons, in key order, the same
//! on every node. Objects whose stored form does not even match the schema are left out by
//! [`ConfigDoc::hydrate`] and quarantined as well.

pub mod model;
pub mod usage;
pub mod validate;

mod doc;
mod entry;
mod error;
mod scope;
mod signed;
mod sync;

#[cfg(test)]
mod tests;

pub use automerge::ChangeHash;
pub use doc::{Applied, ConfigDoc, Hydrated, LocalAuthor, Model};
pub use entry::{
    ANCHORS, Collection, DUTIES, FIRMWARE_TARGETS, FLEET_API_KEYS, FLEET_SNAPSHOTS, MEMBERS,
    NODE_OVERRIDES, OIDC_PROVIDERS, ObjectRef, POLICIES, REVOCATIONS, ROUTES, SITE_NODE_OVERRIDES,
    SITE_ROUTES, TENANT_API_KEYS, TENANT_CAS, TENANT_SNAPSHOTS, TENANTS,
};
pub use error::{ChangeError, DocError, LocalError, RemoteError, SyncError, Unauthorized};
pub use model::{
    ActionType, Anchor, ApiKeyRecord, DutyLease, FirmwareTarget, FleetDoc, FleetSettings, Member,
    NodeOverride, OidcProvider, Revocation, RouteAction, RouteMatch, RoutePolicy, Snapshot,
    SourceTenant, StreamMode, Tenant, TenantCa, TenantDoc, TenantQuotas, site_key, split_site_key,
};
pub use signed::{
    AuthorDirectory, AuthorFacts, Caller, CallerRole, DocId, KnownAuthor, MAX_CHANGE_BYTES,
    SIGNATURE_DOMAIN, SignedChange, authorize, may_replicate,
};
pub use sync::{EnvelopeSource, MemoryEnvelopes, PeerSync, SyncLimits, SyncPacket};
pub use validate::{
    Effective, ID_MAX, Invalid, KnownNode, KnownNodes, NAME_MAX, PRIORITY_MAX, Problem,
    Quarantined, RATE_LIMIT_MAX, TENANT_ROLES, WEIGHT_MAX, effective_fleet, effective_fleet_with,
    effective_tenant, effective_tenant_with, validate, validate_tenant,
};
