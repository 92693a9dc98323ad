//! Certificates: the fleet root CA, anchor intermediate CAs, tenant CAs, and machine
//! identity certificates (MICs) for nodes, plus PEM helpers and CSR checks.
//!
//! # Hierarchy
//!
//! ```text
//! fleet root CA      CN "Nexus fleet root <fleet_id>", O "Nexus Cloud", CA:TRUE, 10 years
//! └─ anchor CA       CN "Nexus anchor CA <anchor node id>", O "Nexus Cloud", OU <fleet_id>,
//!    │               CA:TRUE pathlen 1, 5 years (never past the root's notAfter)
//!    ├─ tenant CA    CN <tenant>, O "Nexus Cloud", OU <fleet_id>,
//!    │  │            SAN URI nexus://<fleet_id>/<tenant>/ca/<anchor node id>,
//!    │  │            CA:TRUE pathlen 0, never past the anchor CA's notAfter
//!    │  └─ node MIC  of that tenant only (role node)
//!    └─ node MIC     any tenant; anchors' own MICs
//! ```
//!
//! All keys are ed25519. The fleet id is stored in the root's CN (after the fixed
//! prefix) and in the intermediates' OU so it can be read back from the
//! certificates alone.
//!
//! Each anchor makes its own CA for each tenant ([`CertificateAuthority::new_tenant_ca_with`]),
//! certified by its anchor CA; its key never leaves that anchor. A tenant CA issues MICs of its
//! own tenant only, and every verifier refuses a MIC whose tenant is not its tenant CA's (see
//! [`crate::TrustStore::verify_mic`]): a tenant CA's key can mint nothing outside its tenant.
//! Anchor CAs made before tenant CAs existed carry pathlen 0 and cannot certify a CA below
//! them ([`CertificateAuthority::can_certify_tenant_cas`]); re-certifying the same key
//! ([`CertificateAuthority::certify_intermediate`]) gives them pathlen 1.
//!
//! # MIC layout
//!
//! * X.509 v3, ed25519 subject key, random 16-byte positive serial.
//! * Subject: CN = node id (32 lowercase hex), O = fleet id, OU = role (`anchor`/`node`).
//! * Issuer: the issuing CA's subject (byte-identical, so webpki/openssl chain it).
//! * Subject alternative names:
//!   * URI `nexus://<fleet_id>/<tenant>/node/<node_id>`
//!   * URI `nexus://<fleet_id>/site/<site>`
//!   * URI `nexus://<fleet_id>/role/<anchor|node>`
//!   * URI `nexus://<fleet_id>/trust/<level>`: trust level 0–255, from the role (anchor 2,
//!     node 1); what a relying party may let the holder do beyond membership
//!   * URI `nexus://<fleet_id>/capability/<name>`, one per capability, from the role: an anchor
//!     `admit`, `issue`, `revoke`, `log`; a node `gossip`, `replicate`, `route`
//!   * DNS `<node_id>.node.nexus.invalid` (webpki refuses certificates without a
//!     usable DNS/IP name; `.invalid` can never resolve, so it names nothing real)
//! * basicConstraints CA:FALSE (critical), keyUsage digitalSignature,
//!   extKeyUsage serverAuth + clientAuth, subject and authority key identifiers.
//! * notBefore = now − 5 minutes (tolerates clock skew between anchor and node),
//!   notAfter = now + validity, capped at the issuing CA's notAfter because a
//!   certificate cannot be used past its issuer's lifetime anyway.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_SIG_ED25519, Oid};
use x509_parser::prelude::FromDer;

use crate::error::CaError;
use crate::identity::{NodeId, NodeKey, RcgenPublicKey};
use crate::keys::{CaSigner, RcgenSigner};

/// A DER-encoded X.509 certificate.
pub type CertDer = Vec<u8>;

/// Organization name on the root and intermediate CAs.
const ORGANIZATION: &str = "Nexus Cloud";
/// Root CA subject CN prefix; the fleet id follows it.
const ROOT_CN_PREFIX: &str = "Nexus fleet root ";
/// Intermediate CA subject CN prefix; the anchor's node id follows it.
const INTERMEDIATE_CN_PREFIX: &str = "Nexus anchor CA ";
/// pathLenConstraint of anchor CAs: room for one tenant CA between an anchor CA and a MIC.
const ANCHOR_PATHLEN: u8 = 1;
/// The path segment after the tenant in a tenant CA's SAN URI,
/// `nexus://<fleet>/<tenant>/ca/<anchor>`.
const TENANT_CA_SEGMENT: &str = "ca";
/// Scheme of all Nexus SAN URIs.
const URI_SCHEME: &str = "nexus://";
/// DNS SAN suffix of a MIC.
const NODE_DNS_SUFFIX: &str = ".node.nexus.invalid";
/// Tenant used when a profile names none.
pub const DEFAULT_TENANT: &str = "default";

/// Backdating of notBefore, so a node whose clock is a little behind the
/// anchor's still accepts a freshly issued certificate.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);
/// How far every certificate's notBefore is backdated (tolerates clocks a little behind), in
/// seconds: a certificate's *intended* lifetime is notAfter - notBefore - this.
pub const BACKDATE_SECS: i64 = 300;
const ROOT_VALIDITY: time::Duration = time::Duration::days(3650);
const INTERMEDIATE_VALIDITY: time::Duration = time::Duration::days(1826);

/// SHA-256 over a certificate's DER: the fingerprint join tokens carry.
pub fn sha256_fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// All `CERTIFICATE` blocks of a PEM document, in order, as DER.
///
/// Other block types (keys, CSRs) are skipped; finding no certificate at all is an error.
pub fn pem_to_der(pem: &str) -> Result<Vec<CertDer>, CaError> {
    let bad = |reason: String| CaError::BadPem {
        what: "certificate",
        label: "CERTIFICATE",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// A certificate's DER as a PEM `CERTIFICATE` block (64-column base64, trailing newline).
pub fn der_to_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What a node is in the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An anchor: runs an intermediate CA and admits joining nodes.
    Anchor,
    /// An ordinary edge node.
    Node,
}

impl Role {
    /// `"anchor"` or `"node"`, as used in certificates and on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Anchor => "anchor",
            Role::Node => "node",
        }
    }

    /// The trust level a MIC of this role carries (0 = untrusted … 255).
    pub fn trust_level(&self) -> u8 {
        match self {
            Role::Anchor => 2,
            Role::Node => 1,
        }
    }

    /// The capabilities a MIC of this role names.
    pub fn capabilities(&self) -> &'static [&'static str] {
        match self {
            Role::Anchor => &["admit", "issue", "revoke", "log"],
            Role::Node => &["gossip", "replicate", "route"],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CaError;

    fn from_str(s: &str) -> Result<Role, CaError> {
        match s {
            "anchor" => Ok(Role::Anchor),
            "node" => Ok(Role::Node),
            _ => Err(CaError::InvalidName {
                what: "role",
                value: s.to_string(),
                reason: "expected \"anchor\" or \"node\"",
            }),
        }
    }
}

/// What a machine identity certificate (MIC) says about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MicProfile {
    /// Fleet the node belongs to; must be the issuing CA's fleet.
    pub fleet_id: String,
    /// The node; must be `NodeId::from_public_key` of the certified key.
    pub node_id: NodeId,
    /// Tenant; an empty string is replaced by `"default"`.
    pub tenant: String,
    /// Site (may be empty when unknown).
    pub site: String,
    /// Anchor or ordinary node.
    pub role: Role,
    /// How long the certificate is valid from now.
    pub validity: Duration,
}

/// Checks a fleet id, tenant or site before it goes into a URI or DN.
///
/// Restricting the alphabet keeps SAN URIs unambiguous (no `/`) and valid IA5 text.
pub fn validate_name(what: &'static str, value: &str, allow_empty: bool) -> Result<(), CaError> {
    let bad = |reason| CaError::InvalidName {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(bad("it must not be empty"))
        };
    }
    if value.len() > 63 {
        return Err(bad("it must be at most 63 characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad("use only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// A CA that can sign: the fleet root, or an anchor's intermediate.
///
/// Its key is any [`CaSigner`]: in memory, a key file, or a PKCS#11 token.
/// `Debug` says where the key lives but never prints it.
pub struct CertificateAuthority {
    cert_der: CertDer,
    key: Arc<dyn CaSigner>,
    fleet_id: String,
    kind: CaKind,
    not_after: OffsetDateTime,
}

/// Which of the three Nexus CAs a [`CertificateAuthority`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CaKind {
    /// The self-signed fleet root.
    Root,
    /// An anchor's intermediate, under the root.
    Anchor,
    /// An anchor's CA for one tenant, under that anchor's intermediate.
    Tenant(String),
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fleet_id", &self.fleet_id)
            .field("kind", &self.kind)
            .field("fingerprint", &hex::encode(self.fingerprint()))
            .field("key", &self.key.describe())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// New self-signed fleet root CA (ed25519, CA:TRUE, keyCertSign+cRLSign,
    /// 10 years, subject CN `"Nexus fleet root <fleet_id>"`, O `"Nexus Cloud"`),
    /// with a freshly generated in-memory key.
    pub fn new_fleet_root(fleet_id: &str) -> Result<CertificateAuthority, CaError> {
        CertificateAuthority::new_fleet_root_with(fleet_id, Arc::new(NodeKey::generate()))
    }

    /// [`new_fleet_root`](Self::new_fleet_root) with the root key kept by `key` (a file, a
    /// PKCS#11 token, ...).
    pub fn new_fleet_root_with(
        fleet_id: &str,
        key: Arc<dyn CaSigner>,
    ) -> Result<CertificateAuthority, CaError> {
        validate_name("fleet id", fleet_id, false)?;
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(format!("{ROOT_CN_PREFIX}{fleet_id}"), None);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ROOT_VALIDITY;
        let rcgen_key = RcgenSigner::new(&*key);
        let cert = params
            .self_signed(&rcgen_key)
            .map_err(|e| rcgen_key.error(e))?;
        Ok(CertificateAuthority {
            cert_der: cert.der().to_vec(),
            key,
            fleet_id: fleet_id.to_string(),
            kind: CaKind::Root,
            not_after: truncate_to_seconds(params.not_after),
        })
    }

    /// New anchor intermediate CA signed by this root (CA:TRUE pathlen 1,
    /// 5 years but not past the root's expiry, CN `"Nexus anchor CA <anchor node id>"`).
    ///
    /// The intermediate gets its own freshly generated in-memory key; `fleet_id` must be this
    /// root's fleet.
    pub fn new_intermediate(
        &self,
        fleet_id: &str,
        anchor: NodeId,
    ) -> Result<CertificateAuthority, CaError> {
        self.new_intermediate_with(fleet_id, anchor, Arc::new(NodeKey::generate()))
    }

    /// [`new_intermediate`](Self::new_intermediate) with the intermediate's key kept by `key`.
    pub fn new_intermediate_with(
        &self,
        fleet_id: &str,
        anchor: NodeId,
        key: Arc<dyn CaSigner>,
    ) -> Result<CertificateAuthority, CaError> {
        if !self.is_root() {
            // Anchor CAs sit directly under the root; a deeper one would leave no room for
            // tenant CAs and chains would not verify.
            return Err(CaError::Generate(
                "anchor intermediates must be signed by the fleet root CA, not by another \
                 intermediate"
                    .into(),
            ));
        }
        self.check_fleet(fleet_id)?;
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(format!("{INTERMEDIATE_CN_PREFIX}{anchor}"), Some(fleet_id));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(ANCHOR_PATHLEN));
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + INTERMEDIATE_VALIDITY).min(self.not_after);
        params.use_authority_key_identifier_extension = true;
        let issuer = self.issuer()?;
        let cert = params
            .signed_by(&RcgenSigner::new(&*key), &issuer)
            .map_err(|e| issuer.key().error(e))?;
        Ok(CertificateAuthority {
            cert_der: cert.der().to_vec(),
            key,
            fleet_id: fleet_id.to_string(),
            kind: CaKind::Anchor,
            not_after: truncate_to_seconds(params.not_after),
        })
    }

    /// Certifies `public_key` (raw ed25519, held by someone else: a newly promoted anchor, or
    /// an existing intermediate being renewed) as an anchor intermediate CA of this root, with
    /// the same profile as [`new_intermediate_with`](Self::new_intermediate_with).
    ///
    /// Re-certifying an existing intermediate's key keeps every MIC it issued valid: issuer name
    /// and key identifier are unchanged. The new certificate has pathlen 1 even when the old one
    /// had pathlen 0 (made before tenant CAs), so re-certification lets an anchor make tenant CAs.
    pub fn certify_intermediate(
        &self,
        fleet_id: &str,
        anchor: NodeId,
        public_key: &[u8; 32],
        validity: std::time::Duration,
    ) -> Result<CertDer, CaError> {
        if !self.is_root() {
            return Err(CaError::Generate(
                "anchor intermediates must be signed by the fleet root CA, not by another \
                 intermediate"
                    .into(),
            ));
        }
        self.check_fleet(fleet_id)?;
        if ed25519_dalek::VerifyingKey::from_bytes(public_key).is_err() {
            return Err(CaError::BadKey(
                "the public key is not a valid ed25519 point".into(),
            ));
        }
        let validity =
            time::Duration::try_from(validity).map_err(|e| CaError::BadValidity(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(format!("{INTERMEDIATE_CN_PREFIX}{anchor}"), Some(fleet_id));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(ANCHOR_PATHLEN));
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + validity.min(INTERMEDIATE_VALIDITY)).min(self.not_after);
        params.use_authority_key_identifier_extension = true;
        let issuer = self.issuer()?;
        let cert = params
            .signed_by(&RcgenPublicKey(*public_key), &issuer)
            .map_err(|e| issuer.key().error(e))?;
        Ok(cert.der().to_vec())
    }

    /// Loads a CA from its certificate PEM (the first block is used) and unencrypted
    /// PKCS#8 key PEM.
    ///
    /// Fails if the key is not the certificate's key, the certificate is not a CA,
    /// or it is not a Nexus root/intermediate (the fleet id cannot be read).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, CaError> {
        let key = NodeKey::from_pkcs8_pem(key_pem)?;
        CertificateAuthority::load_with(cert_pem, Arc::new(key))
    }

    /// Loads a CA from its certificate PEM (the first block is used) and the [`CaSigner`]
    /// holding its key, with the same checks as [`load`](Self::load).
    pub fn load_with(
        cert_pem: &str,
        key: Arc<dyn CaSigner>,
    ) -> Result<CertificateAuthority, CaError> {
        let cert_der = pem_to_der(cert_pem)?.swap_remove(0);
        let cert = parse_cert(&cert_der)?;
        let public = ed25519_public_key(&cert, "CA certificate")?;
        if public != key.public_key() {
            return Err(CaError::KeyMismatch);
        }
        let subject = cert.subject().to_string();
        if !cert.is_ca() {
            return Err(CaError::NotACa { subject });
        }
        let is_root = cert.subject().as_raw() == cert.issuer().as_raw();
        let (fleet_id, kind) = if is_root {
            (root_fleet_id(&cert)?, CaKind::Root)
        } else if let Some((fleet, tenant, _)) = tenant_ca_uri(&cert)? {
            (fleet, CaKind::Tenant(tenant))
        } else {
            let fleet = first_attr(cert.subject().iter_organizational_unit()).ok_or_else(|| {
                CaError::NotAMic(format!(
                    "CA certificate {subject:?} has no OU naming its fleet; it was not made by \
                     Nexus"
                ))
            })?;
            (fleet, CaKind::Anchor)
        };
        let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .map_err(|e| CaError::BadCertificate(e.to_string()))?;
        Ok(CertificateAuthority {
            cert_der,
            key,
            fleet_id,
            kind,
            not_after,
        })
    }

    /// Whether this is an anchor CA whose certificate allows a CA below it (pathlen 1 or
    /// more). Anchor CAs certified before tenant CAs existed have pathlen 0: chains through a
    /// tenant CA under them would not verify, so they keep issuing MICs themselves until they
    /// are re-certified ([`certify_intermediate`](Self::certify_intermediate) gives pathlen 1).
    pub fn can_certify_tenant_cas(&self) -> bool {
        if self.kind != CaKind::Anchor {
            return false;
        }
        let Ok(cert) = parse_cert(&self.cert_der) else {
            return false;
        };
        match cert.basic_constraints() {
            Ok(Some(bc)) => bc.value.ca && bc.value.path_len_constraint.is_none_or(|n| n >= 1),
            _ => false,
        }
    }

    /// The tenant this CA certifies, for a tenant CA (`None` for the root and anchor CAs).
    pub fn tenant(&self) -> Option<&str> {
        match &self.kind {
            CaKind::Tenant(tenant) => Some(tenant),
            _ => None,
        }
    }

    /// New CA for `tenant` under this anchor CA, its key kept by `key`: subject CN `<tenant>`,
    /// O "Nexus Cloud", OU the fleet id, SAN URI `nexus://<fleet>/<tenant>/ca/<anchor>`,
    /// CA:TRUE pathlen 0, keyCertSign + cRLSign, valid for `validity` but never past this
    /// anchor CA's notAfter.
    ///
    /// Fails on the root, on a tenant CA, and on an anchor CA that cannot certify CAs
    /// ([`can_certify_tenant_cas`](Self::can_certify_tenant_cas)).
    pub fn new_tenant_ca_with(
        &self,
        tenant: &str,
        key: Arc<dyn CaSigner>,
        validity: Duration,
    ) -> Result<CertificateAuthority, CaError> {
        let cert_der = self.certify_tenant_ca(tenant, &key.public_key(), validity)?;
        let not_after = {
            let cert = parse_cert(&cert_der)?;
            OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
                .map_err(|e| CaError::BadCertificate(e.to_string()))?
        };
        Ok(CertificateAuthority {
            cert_der,
            key,
            fleet_id: self.fleet_id.clone(),
            kind: CaKind::Tenant(tenant.to_string()),
            not_after,
        })
    }

    /// Certifies `public_key` (raw ed25519) as this anchor's CA for `tenant`, with the profile
    /// of [`new_tenant_ca_with`](Self::new_tenant_ca_with). Re-certifying a tenant CA's key
    /// (renewal) keeps every MIC it issued valid: subject and key identifier are unchanged.
    pub fn certify_tenant_ca(
        &self,
        tenant: &str,
        public_key: &[u8; 32],
        validity: Duration,
    ) -> Result<CertDer, CaError> {
        if self.kind != CaKind::Anchor {
            return Err(CaError::Generate(
                "tenant CAs are certified by an anchor intermediate CA, not by the fleet root \
                 or another tenant CA"
                    .into(),
            ));
        }
        if !self.can_certify_tenant_cas() {
            return Err(CaError::Generate(
                "this anchor CA was certified with pathlen 0 (before tenant CAs) and cannot \
                 certify a CA below it; it gets pathlen 1 when it is re-certified"
                    .into(),
            ));
        }
        validate_name("tenant", tenant, false)?;
        if ed25519_dalek::VerifyingKey::from_bytes(public_key).is_err() {
            return Err(CaError::BadKey(
                "the public key is not a valid ed25519 point".into(),
            ));
        }
        if *public_key == self.key.public_key() {
            return Err(CaError::BadKey(
                "a tenant CA needs its own key, not the anchor CA's".into(),
            ));
        }
        if validity.is_zero() {
            return Err(CaError::BadValidity(
                "the validity must be longer than zero".into(),
            ));
        }
        let validity =
            time::Duration::try_from(validity).map_err(|e| CaError::BadValidity(e.to_string()))?;
        let (anchor, _, _, _) = CertificateAuthority::describe_intermediate(&self.cert_der)?;
        let fleet = self.fleet_id.as_str();
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(tenant.to_string(), Some(fleet));
        params.subject_alt_names = vec![san_uri(format!(
            "{URI_SCHEME}{fleet}/{tenant}/{TENANT_CA_SEGMENT}/{anchor}"
        ))?];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now
            .checked_add(validity)
            .unwrap_or(self.not_after)
            .min(self.not_after);
        params.use_authority_key_identifier_extension = true;
        let issuer = self.issuer()?;
        let cert = params
            .signed_by(&RcgenPublicKey(*public_key), &issuer)
            .map_err(|e| issuer.key().error(e))?;
        Ok(cert.der().to_vec())
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        der_to_pem(&self.cert_der)
    }

    /// The CA private key, unencrypted PKCS#8 PEM, when it is held in memory (`None` for a
    /// key inside a PKCS#11 token). Store it with mode 0600.
    pub fn key_pem(&self) -> Option<String> {
        self.key.to_pkcs8_pem()
    }

    /// Where this CA's key lives (for logs), as its [`CaSigner::describe`] says.
    pub fn key_description(&self) -> String {
        self.key.describe()
    }

    /// The fleet this CA belongs to.
    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    /// Whether this is the self-signed fleet root (as opposed to an anchor or tenant CA).
    pub fn is_root(&self) -> bool {
        self.kind == CaKind::Root
    }

    /// When this CA's certificate expires, Unix seconds.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after.unix_timestamp()
    }

    /// SHA-256 of the CA certificate (for a root: what join tokens carry).
    pub fn fingerprint(&self) -> [u8; 32] {
        sha256_fingerprint(&self.cert_der)
    }

    /// The anchor a Nexus intermediate was made for (from its CN), its key, and its validity
    /// (Unix seconds).
    pub fn describe_intermediate(der: &[u8]) -> Result<(String, [u8; 32], i64, i64), CaError> {
        let cert = parse_cert(der)?;
        let cn = first_attr(cert.subject().iter_common_name()).unwrap_or_default();
        let anchor = cn
            .strip_prefix(INTERMEDIATE_CN_PREFIX)
            .ok_or_else(|| CaError::NotAMic(format!("{cn:?} is not a Nexus anchor CA")))?
            .to_string();
        let key = ed25519_public_key(&cert, "the anchor CA")?;
        Ok((
            anchor,
            key,
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        ))
    }

    /// What a Nexus tenant CA certificate says: its fleet, tenant, anchor, key and validity.
    /// Fails for anything but a tenant CA (see the module docs for the profile); checks no
    /// signature (see [`crate::TrustStore::add_tenant_ca`]).
    pub fn describe_tenant_ca(der: &[u8]) -> Result<TenantCaInfo, CaError> {
        let cert = parse_cert(der)?;
        let subject = cert.subject().to_string();
        let (fleet_id, tenant, anchor) = tenant_ca_uri(&cert)?.ok_or_else(|| {
            CaError::NotAMic(format!(
                "{subject:?} is not a Nexus tenant CA: it has no \
                 nexus://<fleet>/<tenant>/ca/<anchor> SAN URI"
            ))
        })?;
        let constraints = cert
            .basic_constraints()
            .map_err(|e| CaError::BadCertificate(format!("bad basicConstraints: {e}")))?;
        match constraints {
            Some(bc) if bc.value.ca && bc.value.path_len_constraint == Some(0) => {}
            Some(bc) if bc.value.ca => {
                return Err(CaError::ChainInvalid(format!(
                    "tenant CA {subject:?} allows CAs below it (pathlen {:?}); a tenant CA must \
                     have pathlen 0",
                    bc.value.path_len_constraint
                )));
            }
            _ => return Err(CaError::NotACa { subject }),
        }
        let cn = first_attr(cert.subject().iter_common_name()).unwrap_or_default();
        if cn != tenant {
            return Err(CaError::NotAMic(format!(
                "tenant CA {subject:?} names tenant {tenant:?} in its SAN URI but {cn:?} in its \
                 subject"
            )));
        }
        Ok(TenantCaInfo {
            fleet_id,
            tenant,
            anchor,
            public_key: ed25519_public_key(&cert, "the tenant CA")?,
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }

    /// A PKCS#10 CSR (PEM) signed with this CA's key (whatever backend holds it), proving
    /// possession when the root re-certifies an anchor CA. Subject CN = the CA's key's node-id
    /// form, like node CSRs.
    pub fn csr_pem(&self) -> Result<String, CaError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            NodeId::from_public_key(&self.key.public_key()).to_hex(),
        );
        let signer = RcgenSigner::new(&*self.key);
        let csr = params
            .serialize_request(&signer)
            .map_err(|e| signer.error(e))?;
        csr.pem().map_err(|e| CaError::Generate(e.to_string()))
    }

    /// The CA's raw ed25519 public key (the one in its certificate).
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// Signs a transparency log tree head with this CA's key.
    ///
    /// Deliberately not a general `sign(msg)`: the CA key signs certificates and CRLs, so it
    /// only ever signs other things behind a domain-separation prefix a DER structure cannot
    /// start with (`"nexus-sth-v1\0"`, see [`crate::tlog`]).
    pub fn sign_tree_head(
        &self,
        head: crate::tlog::TreeHead,
    ) -> Result<crate::tlog::SignedTreeHead, crate::tlog::TlogError> {
        crate::tlog::SignedTreeHead::try_sign(head, |msg| self.key.sign(msg))
    }

    /// Issue a node MIC for `public_key` (raw ed25519) with the profile.
    ///
    /// The node id in the profile must equal `NodeId::from_public_key(public_key)`,
    /// and the profile's fleet must be this CA's fleet. A tenant CA issues only node MICs of
    /// its own tenant ([`CaError::TenantMismatch`] otherwise). See the module docs for the
    /// layout.
    pub fn issue_mic(
        &self,
        public_key: &[u8; 32],
        profile: &MicProfile,
    ) -> Result<CertDer, CaError> {
        let actual = NodeId::from_public_key(public_key);
        if actual != profile.node_id {
            return Err(CaError::NodeIdMismatch {
                context: "MIC profile",
                claimed: profile.node_id.to_hex(),
                actual: actual.to_hex(),
            });
        }
        if ed25519_dalek::VerifyingKey::from_bytes(public_key).is_err() {
            return Err(CaError::BadKey(
                "the public key is not a valid ed25519 point".into(),
            ));
        }
        self.check_fleet(&profile.fleet_id)?;
        let tenant = if profile.tenant.is_empty() {
            DEFAULT_TENANT
        } else {
            profile.tenant.as_str()
        };
        validate_name("tenant", tenant, false)?;
        if let CaKind::Tenant(own) = &self.kind {
            if own != tenant {
                return Err(CaError::TenantMismatch {
                    mic_tenant: tenant.to_string(),
                    ca_tenant: own.clone(),
                });
            }
            if profile.role != Role::Node {
                return Err(CaError::Generate(format!(
                    "a tenant CA certifies nodes only; the {} MIC must come from the anchor CA",
                    profile.role
                )));
            }
        }
        validate_name("site", &profile.site, true)?;
        if profile.validity.is_zero() {
            return Err(CaError::BadValidity(
                "the validity must be longer than zero".into(),
            ));
        }
        let validity = time::Duration::try_from(profile.validity)
            .map_err(|e| CaError::BadValidity(e.to_string()))?;

        let node = profile.node_id.to_hex();
        let fleet = profile.fleet_id.as_str();
        let role = profile.role.as_str();
        let now = OffsetDateTime::now_utc();

        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node.clone());
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, fleet);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, role);
        params.subject_alt_names = vec![
            san_uri(format!("{URI_SCHEME}{fleet}/{tenant}/node/{node}"))?,
            san_uri(format!("{URI_SCHEME}{fleet}/site/{}", profile.site))?,
            san_uri(format!("{URI_SCHEME}{fleet}/role/{role}"))?,
            san_uri(format!(
                "{URI_SCHEME}{fleet}/trust/{}",
                profile.role.trust_level()
            ))?,
            rcgen::SanType::DnsName(
                format!("{node}{NODE_DNS_SUFFIX}")
                    .try_into()
                    .map_err(|e: rcgen::Error| CaError::Generate(e.to_string()))?,
            ),
        ];
        for capability in profile.role.capabilities() {
            params.subject_alt_names.push(san_uri(format!(
                "{URI_SCHEME}{fleet}/capability/{capability}"
            ))?);
        }
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = now - CLOCK_SKEW;
        let wanted = now
            .checked_add(validity)
            .ok_or_else(|| CaError::BadValidity("the validity is too long".into()))?;
        params.not_after = wanted.min(self.not_after);

        let issuer = self.issuer()?;
        let cert = params
            .signed_by(&RcgenPublicKey(*public_key), &issuer)
            .map_err(|e| issuer.key().error(e))?;
        Ok(cert.der().to_vec())
    }

    fn check_fleet(&self, fleet_id: &str) -> Result<(), CaError> {
        if fleet_id != self.fleet_id {
            return Err(CaError::WrongFleet {
                found: fleet_id.to_string(),
                expected: self.fleet_id.clone(),
            });
        }
        Ok(())
    }

    /// An rcgen issuer whose DN and key identifier are read back from our own
    /// certificate, so the child's issuer/AKI match this certificate byte for byte.
    ///
    /// It signs with this CA's [`CaSigner`]; map an rcgen failure with
    /// `issuer.key().error(e)` to report the signer's own error (HSM gone, bad signature).
    pub(crate) fn issuer(&self) -> Result<rcgen::Issuer<'static, RcgenSigner<'_>>, CaError> {
        rcgen::Issuer::from_ca_cert_der(
            &CertificateDer::from(self.cert_der.as_slice()),
            RcgenSigner::new(&*self.key),
        )
        .map_err(|e| CaError::Generate(e.to_string()))
    }
}

/// What a tenant CA certificate says about itself ([`CertificateAuthority::describe_tenant_ca`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantCaInfo {
    /// The fleet (from the SAN URI; the OU says the same).
    pub fleet_id: String,
    /// The tenant whose MICs it may issue.
    pub tenant: String,
    /// The anchor holding its key (whose anchor CA certified it).
    pub anchor: NodeId,
    /// Its raw ed25519 key.
    pub public_key: [u8; 32],
    /// notBefore as Unix seconds.
    pub not_before_unix: i64,
    /// notAfter as Unix seconds.
    pub not_after_unix: i64,
}

/// `(fleet, tenant, anchor)` from a tenant CA's `nexus://<fleet>/<tenant>/ca/<anchor>` SAN URI;
/// `None` when the certificate has no such URI (it is not a tenant CA).
pub(crate) fn tenant_ca_uri(
    cert: &X509Certificate<'_>,
) -> Result<Option<(String, String, NodeId)>, CaError> {
    let Some(sans) = cert
        .subject_alternative_name()
        .map_err(|e| CaError::BadCertificate(format!("bad subjectAltName: {e}")))?
    else {
        return Ok(None);
    };
    for name in &sans.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(path) = uri.strip_prefix(URI_SCHEME) else {
            continue;
        };
        if let [fleet, tenant, TENANT_CA_SEGMENT, anchor] =
            path.split('/').collect::<Vec<_>>().as_slice()
        {
            validate_name("tenant", tenant, false)?;
            return Ok(Some((
                fleet.to_string(),
                tenant.to_string(),
                anchor.parse()?,
            )));
        }
    }
    Ok(None)
}

/// The anchor an anchor CA certificate was made for, from its CN; `None` for other
/// certificates.
pub(crate) fn anchor_ca_node(cert: &X509Certificate<'_>) -> Option<String> {
    first_attr(cert.subject().iter_common_name())
        .and_then(|cn| cn.strip_prefix(INTERMEDIATE_CN_PREFIX).map(str::to_string))
}

fn ca_params(cn: String, fleet_ou: Option<&str>) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, ORGANIZATION);
    if let Some(ou) = fleet_ou {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, ou);
    }
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.serial_number = Some(random_serial());
    params
}

/// 16 random bytes with the top bit cleared (DER INTEGERs are signed; serials must
/// be positive) and the next bit set so the encoding is always exactly 16 bytes.
fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn san_uri(uri: String) -> Result<rcgen::SanType, CaError> {
    Ok(rcgen::SanType::URI(uri.try_into().map_err(
        |e: rcgen::Error| CaError::Generate(e.to_string()),
    )?))
}

/// X.509 times have second precision; keep our cached notAfter comparable.
fn truncate_to_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CaError::BadCertificate(format!("not a DER X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::BadCertificate(format!(
            "{} unexpected bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

fn first_attr<'a, 'b>(
    mut iter: impl Iterator<Item = &'b x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Option<String>
where
    'a: 'b,
{
    iter.next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string)
}

/// The fleet id stored in a root certificate's CN.
pub(crate) fn root_fleet_id(cert: &X509Certificate<'_>) -> Result<String, CaError> {
    let cn = first_attr(cert.subject().iter_common_name()).unwrap_or_default();
    match cn.strip_prefix(ROOT_CN_PREFIX) {
        Some(fleet) if !fleet.is_empty() => Ok(fleet.to_string()),
        _ => Err(CaError::NotAMic(format!(
            "the root certificate's CN {cn:?} does not start with {ROOT_CN_PREFIX:?}; it is \
             not a Nexus fleet root"
        ))),
    }
}

fn check_ed25519_oid(oid: &Oid<'_>, what: &'static str) -> Result<(), CaError> {
    if *oid != OID_SIG_ED25519 {
        return Err(CaError::NotEd25519 {
            what,
            found: oid.to_id_string(),
        });
    }
    Ok(())
}

/// The raw ed25519 key of a certificate, refusing other algorithms.
pub(crate) fn ed25519_public_key(
    cert: &X509Certificate<'_>,
    what: &'static str,
) -> Result<[u8; 32], CaError> {
    let spki = cert.public_key();
    check_ed25519_oid(&spki.algorithm.algorithm, what)?;
    spki.subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CaError::BadCertificate("ed25519 public key is not 32 bytes".into()))
}

/// Checks that `cert` carries a valid ed25519 signature by `issuer_key`.
pub(crate) fn verify_signed_by(
    cert: &X509Certificate<'_>,
    issuer_key: &[u8; 32],
) -> Result<(), CaError> {
    check_ed25519_oid(&cert.signature_algorithm.algorithm, "certificate signature")?;
    let sig: [u8; 64] = cert
        .signature_value
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CaError::BadCertificate("ed25519 signature is not 64 bytes".into()))?;
    if crate::identity::verify_signature(issuer_key, cert.tbs_certificate.as_ref(), &sig) {
        Ok(())
    } else {
        Err(CaError::ChainInvalid(format!(
            "{:?} is not signed by the expected issuer",
            cert.subject().to_string()
        )))
    }
}

/// CSR check (anchor side): parse PEM PKCS#10, verify its self-signature,
/// require an ed25519 key, return the raw public key.
pub fn public_key_from_csr(csr_pem: &str) -> Result<[u8; 32], CaError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
        CaError::BadPem {
            what: "certificate signing request",
            label: "CERTIFICATE REQUEST",
            reason: e.to_string(),
        }
    })?;
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CaError::BadCsr(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr("unexpected bytes after the request".into()));
    }
    let info = &csr.certification_request_info;
    check_ed25519_oid(&info.subject_pki.algorithm.algorithm, "the CSR")?;
    check_ed25519_oid(&csr.signature_algorithm.algorithm, "the CSR signature")?;
    let public: [u8; 32] = info
        .subject_pki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CaError::BadCsr("ed25519 public key is not 32 bytes".into()))?;
    let sig: [u8; 64] = csr
        .signature_value
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CaError::CsrSignatureInvalid)?;
    if !crate::identity::verify_signature(&public, info.raw, &sig) {
        return Err(CaError::CsrSignatureInvalid);
    }
    Ok(public)
}

/// Parsed, chain-verified facts about a MIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedMic {
    /// The node (consistent with `public_key`).
    pub node_id: NodeId,
    /// Fleet from the node SAN URI.
    pub fleet_id: String,
    /// Tenant from the node SAN URI.
    pub tenant: String,
    /// Site from the site SAN URI (may be empty).
    pub site: String,
    /// Role from the role SAN URI.
    pub role: Role,
    /// The certified raw ed25519 key.
    pub public_key: [u8; 32],
    /// notBefore as Unix seconds.
    pub not_before_unix: i64,
    /// notAfter as Unix seconds.
    pub not_after_unix: i64,
    /// The serial number, lowercase hex.
    pub serial_hex: String,
    /// Trust level named in the MIC (from the role for MICs that name none).
    pub trust_level: u8,
    /// Capabilities named in the MIC.
    pub capabilities: Vec<String>,
}

/// Parse the MIC fields without verifying the chain (for displaying one's own cert).
///
/// Still checks the MIC is internally consistent: ed25519 key, all three Nexus SAN
/// URIs present and naming one fleet, and the node id matching the key.
pub fn read_mic(der: &[u8]) -> Result<VerifiedMic, CaError> {
    let cert = parse_cert(der)?;
    let public_key = ed25519_public_key(&cert, "the MIC")?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| CaError::BadCertificate(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| CaError::NotAMic("it has no subjectAltName extension".into()))?;

    let mut node: Option<(String, String, String)> = None;
    let mut site: Option<(String, String)> = None;
    let mut role: Option<(String, String)> = None;
    let mut trust_level: Option<u8> = None;
    let mut capabilities = Vec::new();
    for name in &sans.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(path) = uri.strip_prefix(URI_SCHEME) else {
            continue;
        };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [fleet, tenant, "node", id] => {
                node = Some((fleet.to_string(), tenant.to_string(), id.to_string()))
            }
            [fleet, "site", s] => site = Some((fleet.to_string(), s.to_string())),
            [fleet, "role", r] => role = Some((fleet.to_string(), r.to_string())),
            [_, "trust", level] => {
                trust_level = Some(level.parse().map_err(|_| {
                    CaError::NotAMic(format!("trust level {level:?} is not a number 0-255"))
                })?)
            }
            [_, "capability", name] => capabilities.push(name.to_string()),
            _ => {}
        }
    }
    let (fleet_id, tenant, id) = node.ok_or_else(|| {
        CaError::NotAMic("it has no nexus://<fleet>/<tenant>/node/<id> SAN URI".into())
    })?;
    let (site_fleet, site) = site
        .ok_or_else(|| CaError::NotAMic("it has no nexus://<fleet>/site/<site> SAN URI".into()))?;
    let (role_fleet, role) = role
        .ok_or_else(|| CaError::NotAMic("it has no nexus://<fleet>/role/<role> SAN URI".into()))?;
    if site_fleet != fleet_id || role_fleet != fleet_id {
        return Err(CaError::NotAMic(format!(
            "its SAN URIs name different fleets ({fleet_id:?}, {site_fleet:?}, {role_fleet:?})"
        )));
    }
    let role: Role = role.parse()?;
    let claimed: NodeId = id.parse()?;
    let node_id = NodeId::from_public_key(&public_key);
    if claimed != node_id {
        return Err(CaError::NodeIdMismatch {
            context: "certificate",
            claimed: claimed.to_hex(),
            actual: node_id.to_hex(),
        });
    }
    Ok(VerifiedMic {
        node_id,
        fleet_id,
        tenant,
        site,
        role,
        public_key,
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        serial_hex: hex::encode(cert.raw_serial()),
        trust_level: trust_level.unwrap_or_else(|| role.trust_level()),
        capabilities,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A root, an anchor intermediate and a node key with its MIC.
    pub(crate) struct Fleet {
        pub root: CertificateAuthority,
        pub intermediate: CertificateAuthority,
        pub anchor_key: NodeKey,
        pub node_key: NodeKey,
        pub node_mic: CertDer,
    }

    pub(crate) fn profile(fleet: &str, key: &NodeKey, role: Role) -> MicProfile {
        MicProfile {
            fleet_id: fleet.to_string(),
            node_id: key.node_id(),
            tenant: String::new(),
            site: "lab-1".to_string(),
            role,
            validity: Duration::from_secs(24 * 3600),
        }
    }

    pub(crate) fn fleet(fleet_id: &str) -> Fleet {
        let root = CertificateAuthority::new_fleet_root(fleet_id).unwrap();
        let anchor_key = NodeKey::generate();
        let intermediate = root
            .new_intermediate(fleet_id, anchor_key.node_id())
            .unwrap();
        let node_key = NodeKey::generate();
        let node_mic = intermediate
            .issue_mic(
                &node_key.public_key(),
                &profile(fleet_id, &node_key, Role::Node),
            )
            .unwrap();
        Fleet {
            root,
            intermediate,
            anchor_key,
            node_key,
            node_mic,
        }
    }

    /// A fleet's anchor CA and its CA for `tenant`, with a node of that tenant and its MIC.
    pub(crate) struct TenantFleet {
        pub fleet: Fleet,
        pub tenant_ca: CertificateAuthority,
        pub node_key: NodeKey,
        pub node_mic: CertDer,
    }

    pub(crate) fn tenant_fleet(fleet_id: &str, tenant: &str) -> TenantFleet {
        let fleet = fleet(fleet_id);
        let tenant_ca = fleet
            .intermediate
            .new_tenant_ca_with(
                tenant,
                Arc::new(NodeKey::generate()),
                Duration::from_secs(365 * 24 * 3600),
            )
            .unwrap();
        let node_key = NodeKey::generate();
        let mut p = profile(fleet_id, &node_key, Role::Node);
        p.tenant = tenant.to_string();
        let node_mic = tenant_ca.issue_mic(&node_key.public_key(), &p).unwrap();
        TenantFleet {
            fleet,
            tenant_ca,
            node_key,
            node_mic,
        }
    }

    /// A MIC `ca` signs without the tenant checks of `issue_mic`: what a rogue or buggy
    /// tenant CA could produce.
    pub(crate) fn forge_mic(
        ca: &CertificateAuthority,
        key: &NodeKey,
        profile: &MicProfile,
    ) -> CertDer {
        let unchecked = CertificateAuthority {
            cert_der: ca.cert_der.clone(),
            key: ca.key.clone(),
            fleet_id: ca.fleet_id.clone(),
            kind: CaKind::Anchor,
            not_after: ca.not_after,
        };
        unchecked.issue_mic(&key.public_key(), profile).unwrap()
    }

    /// An anchor CA with the profile anchors had before tenant CAs: pathlen 0.
    pub(crate) fn legacy_intermediate(
        root: &CertificateAuthority,
        anchor: NodeId,
    ) -> CertificateAuthority {
        let key: Arc<dyn CaSigner> = Arc::new(NodeKey::generate());
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(
            format!("{INTERMEDIATE_CN_PREFIX}{anchor}"),
            Some(root.fleet_id()),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + INTERMEDIATE_VALIDITY;
        params.use_authority_key_identifier_extension = true;
        let issuer = root.issuer().unwrap();
        let cert = params.signed_by(&RcgenSigner::new(&*key), &issuer).unwrap();
        CertificateAuthority {
            cert_der: cert.der().to_vec(),
            key,
            fleet_id: root.fleet_id().to_string(),
            kind: CaKind::Anchor,
            not_after: truncate_to_seconds(params.not_after),
        }
    }

    /// A tenant CA certified by `anchor` whatever its pathlen says.
    pub(crate) fn force_tenant_ca(
        anchor: &CertificateAuthority,
        tenant: &str,
    ) -> CertificateAuthority {
        let unchecked = CertificateAuthority {
            cert_der: anchor.cert_der.clone(),
            key: anchor.key.clone(),
            fleet_id: anchor.fleet_id.clone(),
            kind: CaKind::Anchor,
            not_after: anchor.not_after,
        };
        let key: Arc<dyn CaSigner> = Arc::new(NodeKey::generate());
        let (id, _, _, _) = CertificateAuthority::describe_intermediate(&anchor.cert_der).unwrap();
        let fleet = anchor.fleet_id();
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(tenant.to_string(), Some(fleet));
        params.subject_alt_names = vec![
            san_uri(format!(
                "{URI_SCHEME}{fleet}/{tenant}/{TENANT_CA_SEGMENT}/{id}"
            ))
            .unwrap(),
        ];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + time::Duration::days(1);
        params.use_authority_key_identifier_extension = true;
        let issuer = unchecked.issuer().unwrap();
        let cert = params.signed_by(&RcgenSigner::new(&*key), &issuer).unwrap();
        CertificateAuthority {
            cert_der: cert.der().to_vec(),
            key,
            fleet_id: fleet.to_string(),
            kind: CaKind::Tenant(tenant.to_string()),
            not_after: truncate_to_seconds(params.not_after),
        }
    }

    #[test]
    fn tenant_ca_profile() {
        let t = tenant_fleet("acme", "blue");
        let ca = &t.tenant_ca;
        assert_eq!(ca.tenant(), Some("blue"));
        assert_eq!(ca.fleet_id(), "acme");
        assert!(!ca.is_root() && !ca.can_certify_tenant_cas());
        assert!(t.fleet.intermediate.can_certify_tenant_cas());
        assert!(!t.fleet.root.can_certify_tenant_cas());
        let info = CertificateAuthority::describe_tenant_ca(ca.cert_der()).unwrap();
        assert_eq!(info.tenant, "blue");
        assert_eq!(info.fleet_id, "acme");
        assert_eq!(info.anchor, t.fleet.anchor_key.node_id());
        assert_eq!(info.public_key, ca.public_key());
        // Never outlives the anchor CA that certified it.
        assert!(ca.not_after_unix() <= t.fleet.intermediate.not_after_unix());
        let long = t
            .fleet
            .intermediate
            .new_tenant_ca_with(
                "blue",
                Arc::new(NodeKey::generate()),
                Duration::from_secs(100 * 365 * 24 * 3600),
            )
            .unwrap();
        assert_eq!(long.not_after_unix(), t.fleet.intermediate.not_after_unix());
        // An anchor CA is not a tenant CA, and a tenant CA certifies no CA.
        assert!(CertificateAuthority::describe_tenant_ca(t.fleet.intermediate.cert_der()).is_err());
        let err = ca
            .certify_tenant_ca(
                "blue",
                &NodeKey::generate().public_key(),
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(err.to_string().contains("anchor intermediate"), "{err}");
        assert!(
            t.fleet
                .root
                .certify_tenant_ca(
                    "blue",
                    &NodeKey::generate().public_key(),
                    Duration::from_secs(60)
                )
                .is_err()
        );
        assert!(
            t.fleet
                .intermediate
                .certify_tenant_ca(
                    "a/b",
                    &NodeKey::generate().public_key(),
                    Duration::from_secs(60)
                )
                .is_err()
        );
        // Its own key, never the anchor CA's.
        let err = t
            .fleet
            .intermediate
            .certify_tenant_ca(
                "blue",
                &t.fleet.intermediate.public_key(),
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(matches!(err, CaError::BadKey(_)), "{err}");
        // Reloaded from PEM it is still blue's CA.
        let reloaded = CertificateAuthority::load(&ca.cert_pem(), &ca.key_pem().unwrap()).unwrap();
        assert_eq!(reloaded.tenant(), Some("blue"));
        assert_eq!(reloaded.fleet_id(), "acme");
        // The MIC it issued reads back as blue's, issued by the tenant CA.
        let mic = read_mic(&t.node_mic).unwrap();
        assert_eq!(mic.tenant, "blue");
        assert_eq!(mic.role, Role::Node);
        assert!(mic.not_after_unix <= ca.not_after_unix());
    }

    #[test]
    fn a_tenant_ca_issues_only_its_tenants_node_mics() {
        let t = tenant_fleet("acme", "blue");
        let key = NodeKey::generate();
        let mut p = profile("acme", &key, Role::Node);
        p.tenant = "green".into();
        let err = t.tenant_ca.issue_mic(&key.public_key(), &p).unwrap_err();
        assert_eq!(
            err,
            CaError::TenantMismatch {
                mic_tenant: "green".into(),
                ca_tenant: "blue".into()
            }
        );
        assert!(err.to_string().contains("only its own tenant"), "{err}");
        // The default tenant is a tenant like any other.
        p.tenant = String::new();
        assert!(matches!(
            t.tenant_ca.issue_mic(&key.public_key(), &p),
            Err(CaError::TenantMismatch { .. })
        ));
        let mut p = profile("acme", &key, Role::Anchor);
        p.tenant = "blue".into();
        let err = t.tenant_ca.issue_mic(&key.public_key(), &p).unwrap_err();
        assert!(err.to_string().contains("nodes only"), "{err}");
    }

    #[test]
    fn legacy_anchor_cas_cannot_certify_tenant_cas_until_recertified() {
        let f = fleet("acme");
        let anchor = f.anchor_key.node_id();
        let legacy = legacy_intermediate(&f.root, anchor);
        assert!(!legacy.can_certify_tenant_cas());
        let err = legacy
            .new_tenant_ca_with(
                "blue",
                Arc::new(NodeKey::generate()),
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(err.to_string().contains("pathlen 0"), "{err}");
        // Re-certifying its key gives it room for a tenant CA.
        let renewed = f
            .root
            .certify_intermediate(
                "acme",
                anchor,
                &legacy.public_key(),
                Duration::from_secs(3600),
            )
            .unwrap();
        let renewed =
            CertificateAuthority::load_with(&der_to_pem(&renewed), legacy.key.clone()).unwrap();
        assert!(renewed.can_certify_tenant_cas());
        assert!(
            renewed
                .new_tenant_ca_with(
                    "blue",
                    Arc::new(NodeKey::generate()),
                    Duration::from_secs(60)
                )
                .is_ok()
        );
    }

    #[test]
    fn a_recertified_intermediate_keeps_its_mics_valid() {
        let f = fleet("acme");
        let (_, key, _, not_after) =
            CertificateAuthority::describe_intermediate(f.intermediate.cert_der()).unwrap();
        assert_eq!(key, f.intermediate.public_key());
        // The CA proves it holds its key with a CSR, whatever backend keeps it.
        let csr = f.intermediate.csr_pem().unwrap();
        assert_eq!(crate::public_key_from_csr(&csr).unwrap(), key);
        let anchor = f.anchor_key.node_id();
        let renewed = f
            .root
            .certify_intermediate("acme", anchor, &key, std::time::Duration::from_secs(3600))
            .unwrap();
        let (_, renewed_key, _, renewed_not_after) =
            CertificateAuthority::describe_intermediate(&renewed).unwrap();
        assert_eq!(renewed_key, key);
        assert!(
            renewed_not_after < not_after,
            "capped at the asked validity"
        );
        // A MIC the old certificate's key issued verifies through the new certificate alone.
        let store = crate::TrustStore::new(f.root.cert_der().to_vec(), vec![renewed]).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(store.verify_mic(&f.node_mic, now).is_ok());
        // Only a root certifies intermediates.
        assert!(
            f.intermediate
                .certify_intermediate("acme", anchor, &key, std::time::Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn pem_roundtrip_keeps_all_blocks() {
        let f = fleet("acme");
        let pem = format!("{}{}", f.root.cert_pem(), der_to_pem(&f.node_mic));
        let ders = pem_to_der(&pem).unwrap();
        assert_eq!(ders, vec![f.root.cert_der().to_vec(), f.node_mic.clone()]);
        assert!(matches!(pem_to_der("nothing"), Err(CaError::BadPem { .. })));
    }

    #[test]
    fn read_mic_returns_profile_fields() {
        let f = fleet("acme");
        let mic = read_mic(&f.node_mic).unwrap();
        assert_eq!(mic.node_id, f.node_key.node_id());
        assert_eq!(mic.fleet_id, "acme");
        assert_eq!(mic.tenant, DEFAULT_TENANT);
        assert_eq!(mic.site, "lab-1");
        assert_eq!(mic.role, Role::Node);
        assert_eq!(mic.public_key, f.node_key.public_key());
        assert_eq!(
            mic.serial_hex.len(),
            32,
            "16-byte serial: {}",
            mic.serial_hex
        );
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!((mic.not_after_unix - (now + 24 * 3600)).abs() < 60);
    }

    #[test]
    fn issue_refuses_profile_for_another_key() {
        let f = fleet("acme");
        let other = NodeKey::generate();
        let err = f
            .intermediate
            .issue_mic(
                &f.node_key.public_key(),
                &profile("acme", &other, Role::Node),
            )
            .unwrap_err();
        assert!(matches!(err, CaError::NodeIdMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&other.node_id().to_hex()));
    }

    #[test]
    fn issue_refuses_other_fleet_and_bad_names() {
        let f = fleet("acme");
        let k = &f.node_key;
        let err = f
            .intermediate
            .issue_mic(&k.public_key(), &profile("other", k, Role::Node))
            .unwrap_err();
        assert!(matches!(err, CaError::WrongFleet { .. }), "{err}");
        let mut p = profile("acme", k, Role::Node);
        p.site = "a/b".into();
        assert!(matches!(
            f.intermediate.issue_mic(&k.public_key(), &p),
            Err(CaError::InvalidName { what: "site", .. })
        ));
        assert!(CertificateAuthority::new_fleet_root("bad fleet").is_err());
        assert!(
            f.intermediate
                .new_intermediate("acme", k.node_id())
                .is_err()
        );
    }

    #[test]
    fn ca_load_roundtrip_and_key_mismatch() {
        let f = fleet("acme");
        let root =
            CertificateAuthority::load(&f.root.cert_pem(), &f.root.key_pem().unwrap()).unwrap();
        assert!(root.is_root());
        assert_eq!(root.fleet_id(), "acme");
        assert_eq!(root.cert_der(), f.root.cert_der());
        let inter = CertificateAuthority::load(
            &f.intermediate.cert_pem(),
            &f.intermediate.key_pem().unwrap(),
        )
        .unwrap();
        assert!(!inter.is_root());
        assert_eq!(inter.fleet_id(), "acme");
        // A reloaded intermediate still issues MICs that read back.
        let mic = inter
            .issue_mic(
                &f.anchor_key.public_key(),
                &profile("acme", &f.anchor_key, Role::Anchor),
            )
            .unwrap();
        assert_eq!(read_mic(&mic).unwrap().role, Role::Anchor);

        let err =
            CertificateAuthority::load(&f.root.cert_pem(), &f.intermediate.key_pem().unwrap())
                .unwrap_err();
        assert_eq!(err, CaError::KeyMismatch);
    }

    #[test]
    fn csr_roundtrip() {
        let key = NodeKey::generate();
        let csr = key.csr_pem().unwrap();
        assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
        assert_eq!(public_key_from_csr(&csr).unwrap(), key.public_key());
    }

    #[test]
    fn csr_with_tampered_signature_is_rejected() {
        let key = NodeKey::generate();
        let csr = key.csr_pem().unwrap();
        let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        // The ed25519 signature is the last 64 bytes of the DER.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = pem_block("CERTIFICATE REQUEST", &der);
        assert_eq!(
            public_key_from_csr(&tampered).unwrap_err(),
            CaError::CsrSignatureInvalid
        );

        // Swapping in another key (re-pointing the request) must fail too.
        let other = NodeKey::generate().public_key();
        let mut swapped = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let pos = swapped
            .windows(32)
            .position(|w| w == key.public_key())
            .unwrap();
        swapped[pos..pos + 32].copy_from_slice(&other);
        assert_eq!(
            public_key_from_csr(&pem_block("CERTIFICATE REQUEST", &swapped)).unwrap_err(),
            CaError::CsrSignatureInvalid
        );
        assert!(matches!(
            public_key_from_csr("garbage"),
            Err(CaError::BadPem { .. })
        ));
    }

    fn run(cmd: &mut std::process::Command) -> std::process::Output {
        match cmd.output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "this test needs the openssl command-line tool: apt-get install openssl ({e})"
            ),
            Err(e) => panic!("could not run openssl: {e}"),
        }
    }

    #[test]
    fn openssl_verifies_a_chain_through_a_tenant_ca() {
        let t = tenant_fleet("acme", "blue");
        let dir = tempfile::Builder::new()
            .prefix("nexus-ca-openssl-tenant-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root.pem");
        let untrusted = dir.path().join("untrusted.pem");
        let tenant_ca = dir.path().join("tenant-ca.pem");
        let node = dir.path().join("node.pem");
        std::fs::write(&root, t.fleet.root.cert_pem()).unwrap();
        std::fs::write(
            &untrusted,
            format!(
                "{}{}",
                t.fleet.intermediate.cert_pem(),
                t.tenant_ca.cert_pem()
            ),
        )
        .unwrap();
        std::fs::write(&tenant_ca, t.tenant_ca.cert_pem()).unwrap();
        std::fs::write(&node, der_to_pem(&t.node_mic)).unwrap();
        let verify = |untrusted: &std::path::Path| {
            run(std::process::Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(&root)
                .arg("-untrusted")
                .arg(untrusted)
                .arg(&node))
        };
        let out = verify(&untrusted);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "openssl verify failed:\n{stdout}\n{stderr}"
        );
        // Without the anchor CA the tenant CA leads nowhere.
        assert!(!verify(&tenant_ca).status.success());

        let out = run(std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&tenant_ca));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Subject: CN = blue, O = Nexus Cloud, OU = acme"),
            "{text}"
        );
        let anchor = t.fleet.anchor_key.node_id();
        assert!(
            text.contains(&format!("URI:nexus://acme/blue/ca/{anchor}")),
            "{text}"
        );
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        let inter = dir.path().join("intermediate.pem");
        std::fs::write(&inter, t.fleet.intermediate.cert_pem()).unwrap();
        let out = run(std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&inter));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");
    }

    #[test]
    fn openssl_verifies_the_chain() {
        let f = fleet("acme");
        let dir = tempfile::Builder::new()
            .prefix("nexus-ca-openssl-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root.pem");
        let inter = dir.path().join("intermediate.pem");
        let node = dir.path().join("node.pem");
        std::fs::write(&root, f.root.cert_pem()).unwrap();
        std::fs::write(&inter, f.intermediate.cert_pem()).unwrap();
        std::fs::write(&node, der_to_pem(&f.node_mic)).unwrap();

        let out = run(std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(&inter)
            .arg(&node));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "openssl verify failed:\n{stdout}\n{stderr}"
        );

        let out = run(std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&node));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = f.node_key.node_id();
        assert!(
            text.contains(&format!("URI:nexus://acme/default/node/{id}")),
            "{text}"
        );
        assert!(text.contains("URI:nexus://acme/site/lab-1"), "{text}");
        assert!(text.contains("URI:nexus://acme/role/node"), "{text}");
        assert!(text.contains("URI:nexus://acme/trust/1"), "{text}");
        assert!(text.contains("URI:nexus://acme/capability/route"), "{text}");
        let mic = read_mic(&f.node_mic).unwrap();
        assert_eq!(mic.trust_level, 1);
        assert_eq!(mic.capabilities, vec!["gossip", "replicate", "route"]);
        assert!(
            text.contains(&format!("DNS:{id}.node.nexus.invalid")),
            "{text}"
        );
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(text.contains("ED25519"), "{text}");

        // A node MIC checked against another fleet's root must fail.
        let other = fleet("other");
        std::fs::write(&root, other.root.cert_pem()).unwrap();
        let out = run(std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(&inter)
            .arg(&node));
        assert!(!out.status.success(), "openssl accepted a foreign root");
    }
}
