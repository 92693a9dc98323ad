//! Signed changes and who may write what.
//!
//! A [`SignedChange`] wraps the raw bytes of exactly one automerge change with the facts a
//! receiver needs to decide whether to apply and relay it: which document it belongs to, which
//! node made it (the *author*, whose key signs), on behalf of which authenticated caller and with
//! which role, under which MIC serial, and when. See the crate docs for the canonical encoding.
//!
//! [`authorize`] is the write rule; [`may_replicate`] the read rule (invariant 5).

use std::fmt;
use std::str::FromStr;

use automerge::{Change, ChangeHash};
use nexus_ca::{NodeId, NodeKey, Role, validate_name, verify_signature};
use sha2::{Digest, Sha256};

use crate::error::{ChangeError, Unauthorized};

/// Domain separator of the signed bytes (see the crate docs).
pub const SIGNATURE_DOMAIN: &[u8] = b"nexus-change-v1\0";

/// Version byte of [`SignedChange::encode`].
const WIRE_VERSION: u8 = 1;

/// Largest change a [`SignedChange`] may carry (bytes); bigger writes must be split.
pub const MAX_CHANGE_BYTES: usize = 16 * 1024 * 1024;

/// Largest text field (caller, role, serial, document id) in a [`SignedChange`], bytes.
const MAX_FIELD_BYTES: usize = 1024;

/// Which replicated document a change belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocId {
    /// The fleet document (`fleet`).
    Fleet,
    /// A tenant's document (`tenant/<id>`).
    Tenant(String),
}

impl DocId {
    /// The tenant document of `tenant`, checking the name.
    pub fn tenant(tenant: &str) -> Result<DocId, ChangeError> {
        validate_name("tenant", tenant, false)
            .map_err(|e| ChangeError::BadDocId(format!("tenant/{tenant}: {e}")))?;
        Ok(DocId::Tenant(tenant.to_string()))
    }

    /// The tenant, for a tenant document.
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            DocId::Fleet => None,
            DocId::Tenant(t) => Some(t),
        }
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Fleet => f.write_str("fleet"),
            DocId::Tenant(t) => write!(f, "tenant/{t}"),
        }
    }
}

impl FromStr for DocId {
    type Err = ChangeError;

    /// Parses `fleet` or `tenant/<id>`.
    fn from_str(s: &str) -> Result<DocId, ChangeError> {
        if s == "fleet" {
            return Ok(DocId::Fleet);
        }
        match s.strip_prefix("tenant/") {
            Some(t) => DocId::tenant(t),
            None => Err(ChangeError::BadDocId(format!(
                "{s:?}: expected \"fleet\" or \"tenant/<id>\""
            ))),
        }
    }
}

/// The role an authenticated caller holds (NCC-API-004: admin, operator, viewer per tenant,
/// plus fleet-wide admin; plus site-scoped writers for offline sites).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallerRole {
    /// Fleet-wide administrator: may write the fleet document (through an anchor) and every
    /// tenant's document.
    FleetAdmin,
    /// A tenant's administrator.
    TenantAdmin {
        /// The tenant.
        tenant: String,
    },
    /// A tenant's operator (writes configuration like an admin; user management will differ).
    TenantOperator {
        /// The tenant.
        tenant: String,
    },
    /// A tenant's read-only viewer: never writes.
    TenantViewer {
        /// The tenant.
        tenant: String,
    },
    /// A writer confined to one site of a tenant: only the objects keyed `<site>/…` in the
    /// tenant document's `site_routes` and `site_node_overrides`.
    SiteWriter {
        /// The tenant.
        tenant: String,
        /// The site.
        site: String,
    },
}

impl fmt::Display for CallerRole {
    /// The canonical form, as signed: `fleet-admin`, `tenant-admin:<t>`, `tenant-operator:<t>`,
    /// `tenant-viewer:<t>`, `site-writer:<t>/<site>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerRole::FleetAdmin => f.write_str("fleet-admin"),
            CallerRole::TenantAdmin { tenant } => write!(f, "tenant-admin:{tenant}"),
            CallerRole::TenantOperator { tenant } => write!(f, "tenant-operator:{tenant}"),
            CallerRole::TenantViewer { tenant } => write!(f, "tenant-viewer:{tenant}"),
            CallerRole::SiteWriter { tenant, site } => write!(f, "site-writer:{tenant}/{site}"),
        }
    }
}

impl FromStr for CallerRole {
    type Err = ChangeError;

    fn from_str(s: &str) -> Result<CallerRole, ChangeError> {
        let bad = |why: &str| ChangeError::BadCallerRole(format!("{s:?}: {why}"));
        let name = |what: &'static str, v: &str| {
            validate_name(what, v, false).map_err(|e| bad(&e.to_string()))?;
            Ok::<_, ChangeError>(v.to_string())
        };
        if s == "fleet-admin" {
            return Ok(CallerRole::FleetAdmin);
        }
        let Some((kind, rest)) = s.split_once(':') else {
            return Err(bad("expected fleet-admin or <role>:<tenant>"));
        };
        match kind {
            "tenant-admin" => Ok(CallerRole::TenantAdmin {
                tenant: name("tenant", rest)?,
            }),
            "tenant-operator" => Ok(CallerRole::TenantOperator {
                tenant: name("tenant", rest)?,
            }),
            "tenant-viewer" => Ok(CallerRole::TenantViewer {
                tenant: name("tenant", rest)?,
            }),
            "site-writer" => {
                let (tenant, site) = rest
                    .split_once('/')
                    .ok_or_else(|| bad("expected site-writer:<tenant>/<site>"))?;
                Ok(CallerRole::SiteWriter {
                    tenant: name("tenant", tenant)?,
                    site: name("site", site)?,
                })
            }
            _ => Err(bad("unknown role")),
        }
    }
}

/// The authenticated party a change is made for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    /// Who asked, for the audit trail: `api-key:<key id>`, `user:<subject>`, `node:<node id>`.
    pub identity: String,
    /// What they may do.
    pub role: CallerRole,
}

/// What the fleet knows about a change's author node, from its MIC.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthorFacts {
    /// The author.
    pub node_id: NodeId,
    /// Anchor or ordinary node.
    pub role: Role,
    /// The author's tenant.
    pub tenant: String,
    /// The author's site (may be empty).
    pub site: String,
}

/// A resolved author: its facts and the public key its signatures must verify under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownAuthor {
    /// What its MIC says.
    pub facts: AuthorFacts,
    /// Its raw ed25519 key; `NodeId::from_public_key` of it must be `facts.node_id`.
    pub public_key: [u8; 32],
}

/// Resolves a change's author to what its MIC certifies.
///
/// The node implements this from the MICs it knows (its certificates table, the transparency
/// log, MICs seen in mutual TLS). Returning `None` rejects the change as coming from an unknown
/// author. Whether a MIC revoked *after* the change was made still resolves is the node's policy;
/// it must answer the same on every node, or nodes will accept different change sets.
pub trait AuthorDirectory {
    /// The author `node` as certified by its MIC `mic_serial` (lowercase hex), if known.
    fn resolve(&self, node: &NodeId, mic_serial: &str) -> Option<KnownAuthor>;
}

/// A fixed set of authors, ignoring serials (for tests and simulations).
impl AuthorDirectory for std::collections::BTreeMap<NodeId, KnownAuthor> {
    fn resolve(&self, node: &NodeId, _mic_serial: &str) -> Option<KnownAuthor> {
        self.get(node).cloned()
    }
}

/// One automerge change, signed by the node that made it.
///
/// Nothing in it is trusted until [`SignedChange::verify`] succeeded under the author's key
/// and [`authorize`] accepted the author and caller for the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedChange {
    /// The document the change belongs to.
    pub doc_id: DocId,
    /// The node that made and signed the change.
    pub author: NodeId,
    /// Who asked for the change, and in which role.
    pub caller: Caller,
    /// Serial (lowercase hex) of the author's MIC at signing time.
    pub mic_serial: String,
    /// When the author made the change, Unix milliseconds (advisory; not used for ordering).
    pub timestamp_ms: i64,
    /// The automerge hash of `change`.
    pub change_hash: ChangeHash,
    /// The raw automerge change chunk, exactly as signed.
    pub change: Vec<u8>,
    /// ed25519 signature by the author's key over [`SignedChange::signed_bytes`].
    pub signature: [u8; 64],
}

impl SignedChange {
    /// Signs one change (its raw bytes, as `Change::raw_bytes` or `Change::bytes` give them).
    ///
    /// Fails if `change` is not exactly one automerge change.
    pub fn sign(
        doc_id: DocId,
        change: Vec<u8>,
        author: &NodeKey,
        caller: Caller,
        mic_serial: &str,
        timestamp_ms: i64,
    ) -> Result<SignedChange, ChangeError> {
        let decoded = decode_change(&change)?;
        let mut signed = SignedChange {
            doc_id,
            author: author.node_id(),
            caller,
            mic_serial: mic_serial.to_string(),
            timestamp_ms,
            change_hash: decoded.hash(),
            change,
            signature: [0; 64],
        };
        check_fields(&signed)?;
        signed.signature = author.sign(&signed.signed_bytes());
        Ok(signed)
    }

    /// Checks the envelope under the author's public key and returns the decoded change.
    ///
    /// Checks that the key belongs to `author`, the signature, that `change` is one automerge
    /// change whose hash is `change_hash`, and that the change's actor is one of the author's
    /// (its first 16 bytes are the author's node id) so no node can create changes in another
    /// node's actor sequence. Authorization is separate: [`authorize`].
    pub fn verify(&self, author_public_key: &[u8; 32]) -> Result<Change, ChangeError> {
        if NodeId::from_public_key(author_public_key) != self.author {
            return Err(ChangeError::KeyMismatch {
                author: self.author,
            });
        }
        check_fields(self)?;
        if !verify_signature(author_public_key, &self.signed_bytes(), &self.signature) {
            return Err(ChangeError::BadSignature {
                author: self.author,
                hash: self.change_hash,
            });
        }
        let change = decode_change(&self.change)?;
        if change.hash() != self.change_hash {
            return Err(ChangeError::HashMismatch {
                claimed: self.change_hash,
                actual: change.hash(),
            });
        }
        if !change
            .actor_id()
            .to_bytes()
            .starts_with(self.author.as_bytes())
        {
            return Err(ChangeError::ForeignActor {
                author: self.author,
                actor: change.actor_id().to_hex_string(),
            });
        }
        Ok(change)
    }

    /// The exact bytes the signature covers (see the crate docs):
    ///
    /// `"nexus-change-v1\0" || lp(doc_id) || author (16 bytes) || lp(caller identity) ||
    /// lp(caller role) || lp(mic serial) || timestamp_ms (i64 big-endian) || change hash
    /// (32 bytes) || lp(change bytes)`, where `lp(x)` is `x`'s length as a u32 big-endian
    /// followed by `x`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.change.len());
        out.extend_from_slice(SIGNATURE_DOMAIN);
        self.write_fields(&mut out);
        out
    }

    /// Wire and storage form: a version byte, the signed fields (without the domain
    /// separator), then the 64-byte signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.change.len());
        out.push(WIRE_VERSION);
        self.write_fields(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses [`SignedChange::encode`]'s form. Does not verify anything.
    pub fn decode(bytes: &[u8]) -> Result<SignedChange, ChangeError> {
        let mut r = Reader { buf: bytes };
        let version = r.take(1)?[0];
        if version != WIRE_VERSION {
            return Err(ChangeError::Encoding(format!(
                "unknown signed-change version {version} (this node speaks {WIRE_VERSION})"
            )));
        }
        let doc_id: DocId = r.text(MAX_FIELD_BYTES)?.parse()?;
        let author = NodeId(r.array::<16>()?);
        let identity = r.text(MAX_FIELD_BYTES)?;
        let role: CallerRole = r.text(MAX_FIELD_BYTES)?.parse()?;
        let mic_serial = r.text(MAX_FIELD_BYTES)?;
        let timestamp_ms = i64::from_be_bytes(r.array::<8>()?);
        let change_hash = ChangeHash(r.array::<32>()?);
        let change = r.bytes(MAX_CHANGE_BYTES)?.to_vec();
        let signature = r.array::<64>()?;
        if !r.buf.is_empty() {
            return Err(ChangeError::Encoding(format!(
                "{} trailing bytes after the signature",
                r.buf.len()
            )));
        }
        Ok(SignedChange {
            doc_id,
            author,
            caller: Caller { identity, role },
            mic_serial,
            timestamp_ms,
            change_hash,
            change,
            signature,
        })
    }

    fn write_fields(&self, out: &mut Vec<u8>) {
        put_lp(out, self.doc_id.to_string().as_bytes());
        out.extend_from_slice(self.author.as_bytes());
        put_lp(out, self.caller.identity.as_bytes());
        put_lp(out, self.caller.role.to_string().as_bytes());
        put_lp(out, self.mic_serial.as_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.change_hash.0);
        put_lp(out, &self.change);
    }
}

/// Field sizes bound both the signed bytes and the wire form, so `u32` prefixes never truncate.
fn check_fields(c: &SignedChange) -> Result<(), ChangeError> {
    let too_long = |what: &str, len: usize, max: usize| {
        Err(ChangeError::Encoding(format!(
            "{what} is {len} bytes, more than the {max} allowed"
        )))
    };
    if c.change.len() > MAX_CHANGE_BYTES {
        return too_long("the change", c.change.len(), MAX_CHANGE_BYTES);
    }
    for (what, v) in [
        ("the caller identity", c.caller.identity.len()),
        ("the MIC serial", c.mic_serial.len()),
    ] {
        if v > MAX_FIELD_BYTES {
            return too_long(what, v, MAX_FIELD_BYTES);
        }
    }
    Ok(())
}

/// Decodes exactly one automerge change chunk.
pub(crate) fn decode_change(bytes: &[u8]) -> Result<Change, ChangeError> {
    Change::try_from(bytes).map_err(|e| ChangeError::Malformed(e.to_string()))
}

fn put_lp(out: &mut Vec<u8>, field: &[u8]) {
    // Callers bound every field far below 4 GiB (check_fields, MAX_FIELD_BYTES).
    let len = u32::try_from(field.len()).expect("field lengths are bounded below u32::MAX");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

/// A bounds-checked reader over the wire forms of this crate.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ChangeError> {
        if self.buf.len() < n {
            return Err(ChangeError::Encoding(format!(
                "truncated: wanted {n} more bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ChangeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ChangeError> {
        Ok(u32::from_be_bytes(self.array::<4>()?))
    }

    pub(crate) fn bytes(&mut self, max: usize) -> Result<&'a [u8], ChangeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(ChangeError::Encoding(format!(
                "a field of {len} bytes exceeds the limit of {max}"
            )));
        }
        self.take(len)
    }

    fn text(&mut self, max: usize) -> Result<String, ChangeError> {
        let raw = self.bytes(max)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| ChangeError::Encoding("a text field is not UTF-8".into()))
    }
}

/// The write rule: may `author`, acting for a caller in `caller_role`, change `doc_id`?
///
/// * The fleet document: only a fleet admin, and only through an anchor.
/// * A tenant's document: the tenant's admins and operators, or a fleet admin, through an
///   anchor or a node of that tenant; never a viewer, never another tenant.
/// * A site-scoped writer: only its tenant's document, only through a node of its tenant and
///   site (or an anchor); which objects it may touch (keys `<site>/…` only) is checked on the
///   change's content by the document ([`ConfigDoc`](crate::ConfigDoc)).
pub fn authorize(
    doc_id: &DocId,
    author: &AuthorFacts,
    caller_role: &CallerRole,
) -> Result<(), Unauthorized> {
    let is_anchor = author.role == Role::Anchor;
    match doc_id {
        DocId::Fleet => {
            if *caller_role != CallerRole::FleetAdmin {
                return Err(Unauthorized::NotFleetAdmin {
                    role: caller_role.to_string(),
                });
            }
            if !is_anchor {
                return Err(Unauthorized::FleetChangeNotFromAnchor {
                    author: author.node_id,
                });
            }
            Ok(())
        }
        DocId::Tenant(tenant) => {
            if !is_anchor && author.tenant != *tenant {
                return Err(Unauthorized::AuthorOutsideTenant {
                    author: author.node_id,
                    author_tenant: author.tenant.clone(),
                    tenant: tenant.clone(),
                });
            }
            let caller_tenant = match caller_role {
                CallerRole::FleetAdmin => return Ok(()),
                CallerRole::TenantViewer { .. } => {
                    return Err(Unauthorized::ReadOnly {
                        role: caller_role.to_string(),
                    });
                }
                CallerRole::TenantAdmin { tenant: t }
                | CallerRole::TenantOperator { tenant: t }
                | CallerRole::SiteWriter { tenant: t, .. } => t,
            };
            if caller_tenant != tenant {
                return Err(Unauthorized::CallerOutsideTenant {
                    role: caller_role.to_string(),
                    tenant: tenant.clone(),
                });
            }
            if let CallerRole::SiteWriter { site, .. } = caller_role
                && !is_anchor
                && author.site != *site
            {
                return Err(Unauthorized::AuthorOutsideSite {
                    author: author.node_id,
                    author_site: author.site.clone(),
                    site: site.clone(),
                });
            }
            Ok(())
        }
    }
}

/// The read rule (invariant 5): may `peer` hold `doc_id`? Everyone holds the fleet document;
/// a tenant's document goes only to the tenant's nodes and to anchors. A node checks this before
/// it pushes a change or starts a sync session, and refuses sessions for documents the peer may
/// not hold.
pub fn may_replicate(doc_id: &DocId, peer: &AuthorFacts) -> bool {
    match doc_id {
        DocId::Fleet => true,
        DocId::Tenant(t) => peer.role == Role::Anchor || peer.tenant == *t,
    }
}

/// SHA-256 over the sorted heads, for advertising in gossip: equal digests mean equal change
/// sets (up to hash collisions).
pub(crate) fn digest_heads(heads: &[ChangeHash]) -> [u8; 32] {
    let mut sorted = heads.to_vec();
    sorted.sort();
    let mut h = Sha256::new();
    for head in &sorted {
        h.update(head.0);
    }
    h.finalize().into()
}
