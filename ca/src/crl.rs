//! Revocation: X.509 CRLs signed by anchor intermediates, and the revoked serials a node enforces.
//!
//! Each anchor intermediate signs its own CRL (RFC 5280, v2, with a CRL number and an authority
//! key identifier), listing every certificate it issued and later revoked. Standard tools read
//! it: `openssl crl -inform DER -text`, `openssl verify -crl_check -CRLfile crl.pem ...`.
//!
//! A node accepts a CRL only if its signature verifies with the key of an intermediate in its
//! [`TrustStore`], and only if its number is higher than the one it holds from that issuer, so
//! an old list cannot be replayed to un-revoke a certificate. The lists are self-authenticating:
//! any node may relay them. [`RevocationSet`] is the union the node enforces on gossip, QUIC and
//! API handshakes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use time::OffsetDateTime;

use crate::cert::{
    CertDer, CertificateAuthority, ed25519_public_key, parse_cert, sha256_fingerprint,
};
use crate::error::CaError;
use crate::trust::TrustStore;

/// OID 1.3.101.112 (Ed25519).
const ED25519_OID: &str = "1.3.101.112";

/// Why a certificate was revoked (the RFC 5280 reason codes Nexus uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// No reason given.
    Unspecified,
    /// The node's private key is (or may be) known to someone else.
    KeyCompromise,
    /// Replaced by a newer certificate.
    Superseded,
    /// The node left the fleet (decommissioned).
    CessationOfOperation,
}

impl RevokeReason {
    /// The snake_case name used in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            RevokeReason::Unspecified => "unspecified",
            RevokeReason::KeyCompromise => "key_compromise",
            RevokeReason::Superseded => "superseded",
            RevokeReason::CessationOfOperation => "cessation_of_operation",
        }
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevokeReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevokeReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevokeReason::Superseded => rcgen::RevocationReason::Superseded,
            RevokeReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
        }
    }
}

impl fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevokeReason {
    type Err = CaError;

    fn from_str(s: &str) -> Result<RevokeReason, CaError> {
        Ok(match s {
            "unspecified" => RevokeReason::Unspecified,
            "key_compromise" => RevokeReason::KeyCompromise,
            "superseded" => RevokeReason::Superseded,
            "cessation_of_operation" => RevokeReason::CessationOfOperation,
            _ => {
                return Err(CaError::InvalidName {
                    what: "revocation reason",
                    value: s.to_string(),
                    reason: "expected unspecified, key_compromise, superseded or \
                             cessation_of_operation",
                });
            }
        })
    }
}

/// One revoked certificate as its issuer records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Serial number, lowercase hex of the DER integer's content bytes.
    pub serial_hex: String,
    /// When the anchor processed the revocation, Unix seconds.
    pub revoked_at_unix: i64,
    /// Why.
    pub reason: RevokeReason,
}

/// Checks a serial given by a caller: non-empty lowercase or uppercase hex, at most 20 bytes
/// (RFC 5280). Returns it lowercased.
pub fn normalize_serial(serial: &str) -> Result<String, CaError> {
    let bad = |reason| CaError::InvalidName {
        what: "certificate serial",
        value: serial.to_string(),
        reason,
    };
    if serial.is_empty() || serial.len() > 40 || !serial.len().is_multiple_of(2) {
        return Err(bad(
            "a serial is an even number of hex digits, at most 40 (see `openssl x509 -serial`)",
        ));
    }
    if !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("a serial contains only hex digits 0-9 and a-f"));
    }
    Ok(serial.to_ascii_lowercase())
}

impl CertificateAuthority {
    /// Signs a CRL (v2) listing `revoked`, numbered `number`, valid from now until now +
    /// `next_update`. Numbers must grow with every list this CA issues.
    pub fn issue_crl(
        &self,
        number: u64,
        revoked: &[Revoked],
        next_update: Duration,
    ) -> Result<CertDer, CaError> {
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::now_utc());
        let next = time::Duration::try_from(next_update)
            .ok()
            .and_then(|d| now.checked_add(d))
            .ok_or_else(|| CaError::BadValidity("the CRL's next update is too far away".into()))?;
        let mut entries = Vec::with_capacity(revoked.len());
        for r in revoked {
            let serial = hex::decode(normalize_serial(&r.serial_hex)?)
                .map_err(|e| CaError::Generate(e.to_string()))?;
            let at = OffsetDateTime::from_unix_timestamp(r.revoked_at_unix)
                .map_err(|e| CaError::BadValidity(e.to_string()))?;
            entries.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&serial),
                revocation_time: at,
                reason_code: Some(r.reason.to_rcgen()),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: next,
            crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = self.issuer()?;
        let crl = params
            .signed_by(&issuer)
            .map_err(|e| match issuer.key().error(e) {
                CaError::Generate(e) => CaError::Generate(format!("cannot sign the CRL: {e}")),
                // The CA key's own failure (HSM gone, bad signature) says more.
                other => other,
            })?;
        Ok(crl.der().to_vec())
    }
}

/// A CRL whose signature was checked against a trusted intermediate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// SHA-256 of the issuing intermediate's certificate.
    pub issuer_fingerprint: [u8; 32],
    /// The issuer's subject, as text.
    pub issuer: String,
    /// The CRL number.
    pub number: u64,
    /// thisUpdate, Unix seconds.
    pub this_update_unix: i64,
    /// nextUpdate, Unix seconds (0 when absent).
    pub next_update_unix: i64,
    /// Revoked serials, lowercase hex.
    pub serials: Vec<String>,
}

/// Parses `der` as a CRL and checks it was signed by one of `trust`'s intermediates.
///
/// Refuses: anything that is not a DER CRL, trailing bytes, a signature algorithm other than
/// ed25519, an issuer the trust store does not know, a bad signature, a missing or oversized
/// CRL number.
pub fn verify_crl(trust: &TrustStore, der: &[u8]) -> Result<VerifiedCrl, CaError> {
    let (rest, crl) = x509_parser::parse_x509_crl(der)
        .map_err(|e| CaError::BadCrl(format!("not a DER X.509 CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::BadCrl(format!(
            "{} unexpected bytes after the CRL",
            rest.len()
        )));
    }
    if crl.signature_algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(CaError::BadCrl(format!(
            "signed with algorithm {}, but Nexus CRLs are signed with ed25519",
            crl.signature_algorithm.algorithm.to_id_string()
        )));
    }
    let issuer_raw = crl.issuer().as_raw();
    let issuer = trust
        .intermediates()
        .iter()
        .find_map(|der| {
            let cert = parse_cert(der).ok()?;
            (cert.subject().as_raw() == issuer_raw).then_some((der, cert))
        })
        .ok_or_else(|| {
            CaError::BadCrl(format!(
                "issued by {:?}, which is not an anchor CA this node trusts",
                crl.issuer().to_string()
            ))
        })?;
    let (issuer_der, issuer_cert) = issuer;
    let key = ed25519_public_key(&issuer_cert, "the CRL issuer")?;
    let sig: [u8; 64] = crl
        .signature_value
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CaError::BadCrl("the ed25519 signature is not 64 bytes".into()))?;
    if !crate::identity::verify_signature(&key, crl.tbs_cert_list.as_ref(), &sig) {
        return Err(CaError::BadCrl(format!(
            "the signature does not verify with the key of {:?}: the list was altered or forged",
            crl.issuer().to_string()
        )));
    }
    let number = crl
        .crl_number()
        .ok_or_else(|| CaError::BadCrl("it has no CRL number".into()))?
        .to_bytes_be();
    if number.len() > 8 {
        return Err(CaError::BadCrl(
            "its CRL number is larger than 64 bits".into(),
        ));
    }
    let number = number.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    Ok(VerifiedCrl {
        issuer_fingerprint: sha256_fingerprint(issuer_der),
        issuer: crl.issuer().to_string(),
        number,
        this_update_unix: crl.last_update().timestamp(),
        next_update_unix: crl.next_update().map_or(0, |t| t.timestamp()),
        serials,
    })
}

/// What [`RevocationSet::install`] did with a CRL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// It was newer than what the node held and is now enforced.
    New {
        /// Its number.
        number: u64,
        /// SHA-256 of the issuing anchor CA's certificate.
        issuer: [u8; 32],
    },
    /// The node already held this number or a newer one from the same issuer.
    Stale {
        /// The number the node holds.
        held: u64,
    },
}

#[derive(Default)]
struct RevocationState {
    crls: HashMap<[u8; 32], (VerifiedCrl, CertDer)>,
    revoked: HashSet<String>,
    version: u64,
}

/// The CRLs a node holds (the newest per issuer) and the union of their serials, shared by
/// everything that checks peers: gossip, QUIC and API handshakes.
#[derive(Default)]
pub struct RevocationSet {
    state: RwLock<RevocationState>,
}

impl fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.read();
        f.debug_struct("RevocationSet")
            .field("issuers", &state.crls.len())
            .field("revoked", &state.revoked.len())
            .field("version", &state.version)
            .finish()
    }
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> RevocationSet {
        RevocationSet::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RevocationState> {
        // Writers never panic while holding the lock; a poisoned lock still holds whole data.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the certificate with this serial (lowercase hex) is revoked.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.read().revoked.contains(serial_hex)
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.read().revoked.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.read().revoked.is_empty()
    }

    /// Grows by one every time a newer CRL is installed.
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Verifies `der` against `trust` and, if it is newer than the list held from its issuer,
    /// enforces it from now on.
    pub fn install(&self, trust: &TrustStore, der: &[u8]) -> Result<Installed, CaError> {
        let crl = verify_crl(trust, der)?;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if let Some((held, _)) = state.crls.get(&crl.issuer_fingerprint)
            && held.number >= crl.number
        {
            return Ok(Installed::Stale { held: held.number });
        }
        let (number, issuer) = (crl.number, crl.issuer_fingerprint);
        state
            .crls
            .insert(crl.issuer_fingerprint, (crl, der.to_vec()));
        let revoked = state
            .crls
            .values()
            .flat_map(|(crl, _)| crl.serials.iter().cloned())
            .collect();
        state.revoked = revoked;
        state.version += 1;
        Ok(Installed::New { number, issuer })
    }

    /// The CRLs held, one per issuer, ordered by issuer fingerprint.
    pub fn crls(&self) -> Vec<(VerifiedCrl, CertDer)> {
        let mut all: Vec<_> = self.read().crls.values().cloned().collect();
        all.sort_by_key(|(crl, _)| crl.issuer_fingerprint);
        all
    }

    /// The number of the CRL held from the issuer with this fingerprint.
    pub fn number_from(&self, issuer_fingerprint: &[u8; 32]) -> Option<u64> {
        self.read()
            .crls
            .get(issuer_fingerprint)
            .map(|(crl, _)| crl.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::fleet;

    fn store(f: &crate::cert::tests::Fleet) -> TrustStore {
        TrustStore::new(
            f.root.cert_der().to_vec(),
            vec![f.intermediate.cert_der().to_vec()],
        )
        .unwrap()
    }

    fn revoked(serial: &str) -> Revoked {
        Revoked {
            serial_hex: serial.to_string(),
            revoked_at_unix: OffsetDateTime::now_utc().unix_timestamp(),
            reason: RevokeReason::KeyCompromise,
        }
    }

    #[test]
    fn crl_roundtrip_and_monotonic_numbers() {
        let f = fleet("acme");
        let trust = store(&f);
        let serial = crate::read_mic(&f.node_mic).unwrap().serial_hex;
        let set = RevocationSet::new();
        assert!(!set.is_revoked(&serial));

        let one = f
            .intermediate
            .issue_crl(1, &[revoked(&serial)], Duration::from_secs(3600))
            .unwrap();
        let verified = verify_crl(&trust, &one).unwrap();
        assert_eq!(verified.number, 1);
        assert_eq!(verified.serials, vec![serial.clone()]);
        assert_eq!(
            set.install(&trust, &one).unwrap(),
            Installed::New {
                number: 1,
                issuer: f.intermediate.fingerprint()
            }
        );
        assert!(set.is_revoked(&serial));
        assert_eq!(set.version(), 1);

        // Replaying an older (empty) list cannot un-revoke.
        let zero = f
            .intermediate
            .issue_crl(0, &[], Duration::from_secs(3600))
            .unwrap();
        assert_eq!(
            set.install(&trust, &zero).unwrap(),
            Installed::Stale { held: 1 }
        );
        assert!(set.is_revoked(&serial));
        assert_eq!(set.version(), 1);
        assert_eq!(set.crls().len(), 1);
    }

    #[test]
    fn forged_or_foreign_crls_are_refused() {
        let f = fleet("acme");
        let trust = store(&f);
        let mut crl = f
            .intermediate
            .issue_crl(5, &[revoked("4a01")], Duration::from_secs(3600))
            .unwrap();
        // Flip a byte of the revoked serial: the signature no longer covers the content.
        let pos = crl.windows(2).position(|w| w == [0x4a, 0x01]).unwrap();
        crl[pos + 1] = 0x02;
        let err = verify_crl(&trust, &crl).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");

        let other = fleet("acme");
        let foreign = other
            .intermediate
            .issue_crl(9, &[], Duration::from_secs(3600))
            .unwrap();
        let err = verify_crl(&trust, &foreign).unwrap_err().to_string();
        assert!(err.contains("not an anchor CA this node trusts"), "{err}");

        for garbage in [
            &b""[..],
            b"\x30\x03\x02\x01\x01",
            &foreign[..foreign.len() / 2],
        ] {
            assert!(matches!(
                verify_crl(&trust, garbage),
                Err(CaError::BadCrl(_))
            ));
        }
        let mut trailing = foreign.clone();
        trailing.push(0);
        assert!(verify_crl(&trust, &trailing).is_err());
    }

    #[test]
    fn openssl_reads_the_crl() {
        let f = fleet("acme");
        let serial = crate::read_mic(&f.node_mic).unwrap().serial_hex;
        let crl = f
            .intermediate
            .issue_crl(3, &[revoked(&serial)], Duration::from_secs(3600))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let root = write("root.pem", f.root.cert_pem());
        let int = write("int.pem", f.intermediate.cert_pem());
        let node = write("node.pem", crate::der_to_pem(&f.node_mic));
        let crl_pem = write("crl.pem", crate::cert::pem_block("X509 CRL", &crl));
        let text = std::process::Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&crl_pem)
            .output()
            .expect("openssl must be installed (scripts/test installs it)");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("X509v3 CRL Number"), "{text}");
        assert!(text.contains(&serial.to_uppercase()), "{text}");
        assert!(text.contains("Key Compromise"), "{text}");
        // With the CRL, openssl refuses the revoked MIC.
        let out = std::process::Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(&root)
            .arg("-untrusted")
            .arg(&int)
            .arg("-CRLfile")
            .arg(&crl_pem)
            .arg(&node)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        assert!(said.contains("certificate revoked"), "{said}");
    }

    #[test]
    fn serials_are_checked() {
        assert_eq!(normalize_serial("4A01").unwrap(), "4a01");
        for bad in ["", "abc", "zz", &"0".repeat(42)] {
            assert!(normalize_serial(bad).is_err(), "{bad}");
        }
        assert_eq!(
            "key_compromise".parse::<RevokeReason>().unwrap(),
            RevokeReason::KeyCompromise
        );
        assert!("stolen".parse::<RevokeReason>().is_err());
    }
}
