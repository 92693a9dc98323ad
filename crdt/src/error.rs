//! Error types, one per boundary. Each variant says whether anything changed.

use automerge::ChangeHash;
use nexus_ca::NodeId;

/// A [`SignedChange`](crate::SignedChange) that is malformed or not what it claims.
///
/// Verification never changes a document.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The document id is not `fleet` or `tenant/<valid name>`.
    #[error("bad document id {0}")]
    BadDocId(String),
    /// The caller role is not one of the canonical forms.
    #[error("bad caller role {0}")]
    BadCallerRole(String),
    /// The wire form is truncated, oversized or of an unknown version.
    #[error("bad signed-change encoding: {0}")]
    Encoding(String),
    /// The change bytes are not exactly one automerge change.
    #[error("the change bytes are not an automerge change: {0}")]
    Malformed(String),
    /// The public key given for verification is not the author's.
    #[error("the key presented for author {author} is not that node's key")]
    KeyMismatch {
        /// The claimed author.
        author: NodeId,
    },
    /// The signature does not verify: forged or altered in transit.
    #[error("signature of change {hash} by {author} does not verify (forged or altered)")]
    BadSignature {
        /// The claimed author.
        author: NodeId,
        /// The claimed change hash.
        hash: ChangeHash,
    },
    /// The envelope names a different hash than its change bytes have.
    #[error("the envelope claims change {claimed} but carries change {actual}")]
    HashMismatch {
        /// What the envelope says.
        claimed: ChangeHash,
        /// What the bytes hash to.
        actual: ChangeHash,
    },
    /// The change's automerge actor does not belong to its author.
    #[error(
        "change by {author} uses actor {actor}, which does not start with the author's node id"
    )]
    ForeignActor {
        /// The claimed author.
        author: NodeId,
        /// The change's actor id (hex).
        actor: String,
    },
}

/// An author or caller without the right to make a change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    /// Only a fleet admin writes the fleet document.
    #[error("only a fleet admin may change the fleet document (caller role is {role})")]
    NotFleetAdmin {
        /// The caller's role.
        role: String,
    },
    /// Fleet-document changes must be authored by an anchor.
    #[error("node {author} is not an anchor; only anchors author fleet-document changes")]
    FleetChangeNotFromAnchor {
        /// The author.
        author: NodeId,
    },
    /// A node may author changes only to its own tenant's document.
    #[error(
        "node {author} belongs to tenant {author_tenant:?} and may not author changes to tenant {tenant:?}"
    )]
    AuthorOutsideTenant {
        /// The author.
        author: NodeId,
        /// The author's tenant.
        author_tenant: String,
        /// The document's tenant.
        tenant: String,
    },
    /// The caller's role belongs to another tenant.
    #[error("caller role {role} gives no rights on tenant {tenant:?}")]
    CallerOutsideTenant {
        /// The caller's role.
        role: String,
        /// The document's tenant.
        tenant: String,
    },
    /// Viewers never write.
    #[error("caller role {role} is read-only")]
    ReadOnly {
        /// The caller's role.
        role: String,
    },
    /// A site-scoped writer acts only through nodes of its site (or anchors).
    #[error(
        "node {author} is at site {author_site:?}; a writer for site {site:?} acts only through that site's nodes or an anchor"
    )]
    AuthorOutsideSite {
        /// The author.
        author: NodeId,
        /// The author's site.
        author_site: String,
        /// The writer's site.
        site: String,
    },
    /// A site-scoped writer touched something outside its site's objects.
    #[error(
        "a writer for site {site:?} may only change objects keyed {site}/… in site_routes or site_node_overrides, not {path}"
    )]
    OutsideSiteScope {
        /// The writer's site.
        site: String,
        /// The first path the change touched outside the scope.
        path: String,
    },
}

/// Why a change from another node was not applied. Nothing was applied in any case; the node
/// drops the change, counts it and does not relay it.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The change is for another document.
    #[error("change is for document {found}, not {expected}")]
    WrongDocument {
        /// This document.
        expected: String,
        /// The envelope's document.
        found: String,
    },
    /// The author (or its MIC serial) is not known to the directory.
    #[error("unknown author {author} (MIC serial {serial:?})")]
    UnknownAuthor {
        /// The claimed author.
        author: NodeId,
        /// The claimed MIC serial.
        serial: String,
    },
    /// The envelope is forged, altered or malformed.
    #[error(transparent)]
    Forged(#[from] ChangeError),
    /// The author or caller may not make this change.
    #[error("unauthorized change {hash}: {reason}")]
    Unauthorized {
        /// The change.
        hash: ChangeHash,
        /// Why.
        reason: Unauthorized,
    },
    /// The site-scope check needs objects this node does not have yet: sync first.
    #[error(
        "change {hash} refers to objects this node does not have yet ({detail}); sync, then retry"
    )]
    MissingDependencies {
        /// The change.
        hash: ChangeHash,
        /// What could not be resolved.
        detail: String,
    },
    /// automerge refused the change (for example a second change with the same actor and
    /// sequence number: an author equivocating).
    #[error("automerge refused change {hash}: {source}")]
    Automerge {
        /// The change.
        hash: ChangeHash,
        /// automerge's error (boxed: it is large and rare).
        source: Box<automerge::AutomergeError>,
    },
}

/// Why a local write was not made. The document is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum LocalError<E> {
    /// The caller (or this node, as author) may not make the change.
    #[error(transparent)]
    Unauthorized(#[from] Unauthorized),
    /// The edit refused (typically: validation failed). Carries the edit's error.
    #[error("the edit was refused: {0}")]
    Rejected(E),
    /// The document cannot be read as the model (a model of the wrong kind for this document).
    #[error(transparent)]
    Doc(#[from] DocError),
    /// Writing the model into the document failed; the transaction was rolled back.
    #[error("writing the change failed (rolled back): {0}")]
    Reconcile(String),
    /// Signing failed (the change exceeds [`MAX_CHANGE_BYTES`](crate::MAX_CHANGE_BYTES)).
    /// The change **is** committed locally but unsigned; reload the document from storage.
    #[error("signing the change failed: {0}")]
    Sign(#[from] ChangeError),
}

/// Loading, reading or saving a document.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// The bytes are not an automerge document (or not one of this crate's).
    #[error("cannot load document {doc}: {reason}")]
    Load {
        /// The document.
        doc: String,
        /// Why.
        reason: String,
    },
    /// The stored document was created for another document id (its genesis differs).
    #[error("the stored bytes are not document {doc}: its genesis change {genesis} is missing")]
    WrongGenesis {
        /// The document it was loaded as.
        doc: String,
        /// The genesis expected.
        genesis: ChangeHash,
    },
    /// A state was asked at heads this document does not hold (a snapshot taken on a node
    /// whose changes have not arrived here yet).
    #[error("document {doc} does not hold the state asked for: {reason}")]
    UnknownHeads {
        /// The document.
        doc: String,
        /// Which heads are missing.
        reason: String,
    },
    /// A fleet model was asked of a tenant document, or the other way round.
    #[error("document {doc} does not hold a {model}")]
    WrongModel {
        /// The document.
        doc: String,
        /// The model's name.
        model: &'static str,
    },
}

/// A sync session failed. The session must be dropped (and its peer state not persisted);
/// the document is unchanged, except as [`SyncError::Rejected`] says.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The packet or the automerge message in it does not decode.
    #[error("bad sync packet: {0}")]
    Decode(String),
    /// The peer sent raw change chunks instead of signed envelopes.
    #[error(
        "the peer sent {0} unsigned change chunk(s) in a sync message; only signed envelopes are accepted"
    )]
    UnsignedChanges(usize),
    /// A change in the packet failed verification; **no** change of the packet was applied.
    #[error("sync packet rejected, nothing applied: {0}")]
    Rejected(RemoteError),
    /// This node lacks the envelope of a change it would send (its envelope store is
    /// incomplete); nothing was sent.
    #[error("no signed envelope stored for change {0}; cannot send it")]
    MissingEnvelope(ChangeHash),
    /// automerge's sync bookkeeping failed.
    #[error("automerge sync failed: {0}")]
    Automerge(Box<automerge::AutomergeError>),
}

// Not `#[from]`: that would make the inner error the source too, and `{:#}` chains would print
// the reason twice.
impl From<RemoteError> for SyncError {
    fn from(e: RemoteError) -> SyncError {
        SyncError::Rejected(e)
    }
}
