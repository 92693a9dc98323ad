//! The fleet's trust anchors as a node holds them, and MIC chain verification.
//!
//! Chains are checked by rustls-webpki (the same code rustls uses during TLS),
//! restricted to ed25519, and then the Nexus-specific facts are checked on top:
//! the MIC belongs to the expected fleet and its node id is that of its key.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter};

use crate::cert::{
    CertDer, VerifiedMic, ed25519_public_key, parse_cert, read_mic, root_fleet_id,
    sha256_fingerprint, verify_signed_by,
};
use crate::error::CaError;

/// The only signature algorithm Nexus certificates use.
pub(crate) static ED25519_ONLY: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] =
    &[webpki::ring::ED25519];

/// DER contents of id-kp-serverAuth (1.3.6.1.5.5.7.3.1).
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// DER contents of id-kp-clientAuth (1.3.6.1.5.5.7.3.2).
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Requires the EKU extension, when present, to list serverAuth or clientAuth.
///
/// webpki's own `KeyUsage` checks for one specific purpose; a MIC is used both
/// as a client and a server certificate, so either is accepted here.
struct ServerOrClientAuth;

impl ExtendedKeyUsageValidator for ServerOrClientAuth {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let server = KeyPurposeId::new(EKU_SERVER_AUTH);
        let client = KeyPurposeId::new(EKU_CLIENT_AUTH);
        let mut empty = true;
        for id in iter {
            empty = false;
            let id = id?;
            if id == server || id == client {
                return Ok(());
            }
        }
        // webpki also runs this on the CA certificates of the path, which carry no
        // EKU extension; per RFC 5280 an absent extension means "any purpose".
        if empty {
            return Ok(());
        }
        // The context variant needs a `KeyUsage`, which cannot express "either of two";
        // the unit variant is deprecated but still the honest answer here.
        #[allow(deprecated)]
        Err(webpki::Error::RequiredEkuNotFound)
    }
}

/// Which EKU a chain check demands.
#[derive(Clone, Copy)]
pub(crate) enum Usage {
    /// serverAuth or clientAuth (mesh peers, `TrustStore::verify_mic`).
    Any,
    /// serverAuth only (a joining node checking an anchor).
    Server,
}

/// Converts a Unix time in seconds for webpki, refusing times before 1970.
pub(crate) fn unix_time(now_unix: i64) -> Result<UnixTime, CaError> {
    let secs = u64::try_from(now_unix).map_err(|_| {
        CaError::ChainInvalid(format!("verification time {now_unix} is before 1970"))
    })?;
    Ok(UnixTime::since_unix_epoch(Duration::from_secs(secs)))
}

/// Verifies `end_entity` up to `root` through `intermediates` and returns its MIC facts.
///
/// The path must contain at least one intermediate: nodes are certified by anchor
/// CAs, never directly by the offline root.
pub(crate) fn verify_chain(
    end_entity: &[u8],
    root: &[u8],
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<VerifiedMic, CaError> {
    let ee_der = CertificateDer::from(end_entity);
    let ee = webpki::EndEntityCert::try_from(&ee_der)
        .map_err(|e| CaError::BadCertificate(format!("webpki cannot parse it: {e:?}")))?;
    let root_der = CertificateDer::from(root);
    let anchor = webpki::anchor_from_trusted_cert(&root_der)
        .map_err(|e| CaError::BadCertificate(format!("the root is unusable: {e:?}")))?;
    let anchors = [anchor];
    let path = match usage {
        Usage::Any => ee.verify_for_usage(
            ED25519_ONLY,
            &anchors,
            intermediates,
            now,
            ServerOrClientAuth,
            None,
            None,
        ),
        Usage::Server => ee.verify_for_usage(
            ED25519_ONLY,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        ),
    }
    .map_err(webpki_error)?;
    if path.intermediate_certificates().next().is_none() {
        return Err(CaError::ChainInvalid(
            "the certificate is signed directly by the fleet root; node certificates must be \
             issued by an anchor intermediate CA"
                .into(),
        ));
    }
    read_mic(end_entity)
}

/// Translates webpki's terse error variants into operator-facing messages.
fn webpki_error(e: webpki::Error) -> CaError {
    use webpki::Error as W;
    match e {
        W::CertExpired { time, not_after } => CaError::Expired {
            not_after: crate::rfc3339(not_after.as_secs() as i64),
            now: crate::rfc3339(time.as_secs() as i64),
        },
        W::CertNotValidYet { time, not_before } => CaError::NotYetValid {
            not_before: crate::rfc3339(not_before.as_secs() as i64),
            now: crate::rfc3339(time.as_secs() as i64),
        },
        W::UnknownIssuer => CaError::ChainInvalid(
            "it was not issued by this fleet's root through a known anchor CA (webpki: \
             UnknownIssuer); the certificate belongs to another fleet or its anchor CA is \
             not known here"
                .into(),
        ),
        #[allow(deprecated)]
        W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) => CaError::ChainInvalid(
            "the certificate is not allowed for TLS authentication (extendedKeyUsage lacks \
             serverAuth/clientAuth)"
                .into(),
        ),
        #[allow(deprecated)]
        W::InvalidSignatureForPublicKey
        | W::UnsupportedSignatureAlgorithmForPublicKey
        | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | W::UnsupportedSignatureAlgorithm
        | W::UnsupportedSignatureAlgorithmContext(_) => CaError::ChainInvalid(format!(
            "a signature in the chain does not verify with ed25519 (webpki: {e:?}); the \
             certificate was altered or not issued by Nexus"
        )),
        other => CaError::ChainInvalid(format!("webpki: {other:?}")),
    }
}

/// The fleet's trust anchors as a node holds them: the root and known anchor intermediates.
#[derive(Clone, Debug)]
pub struct TrustStore {
    root: CertDer,
    fleet_id: String,
    intermediates: Vec<CertDer>,
}

impl TrustStore {
    /// Builds a trust store, checking that the root is a self-signed Nexus fleet
    /// root and that every intermediate is a CA signed by that root.
    pub fn new(root_der: CertDer, intermediates: Vec<CertDer>) -> Result<TrustStore, CaError> {
        let root = parse_cert(&root_der)?;
        let root_key = ed25519_public_key(&root, "the fleet root")?;
        if !root.is_ca() || root.subject().as_raw() != root.issuer().as_raw() {
            return Err(CaError::NotACa {
                subject: root.subject().to_string(),
            });
        }
        verify_signed_by(&root, &root_key)?;
        let fleet_id = root_fleet_id(&root)?;
        for der in &intermediates {
            let cert = parse_cert(der)?;
            let subject = cert.subject().to_string();
            if !cert.is_ca() {
                return Err(CaError::NotACa { subject });
            }
            verify_signed_by(&cert, &root_key).map_err(|_| {
                CaError::ChainInvalid(format!(
                    "intermediate {subject:?} is not signed by the root of fleet {fleet_id:?}"
                ))
            })?;
        }
        Ok(TrustStore {
            root: root_der,
            fleet_id,
            intermediates,
        })
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.root
    }

    /// SHA-256 of the root certificate.
    pub fn root_fingerprint(&self) -> [u8; 32] {
        sha256_fingerprint(&self.root)
    }

    /// The fleet id, read from the root's CN.
    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    /// The known anchor intermediates, DER.
    pub fn intermediates(&self) -> &[CertDer] {
        &self.intermediates
    }

    /// Adds an anchor intermediate learned later (checked like in [`TrustStore::new`]).
    /// Adding one already present is a no-op.
    pub fn add_intermediate(&mut self, der: CertDer) -> Result<(), CaError> {
        if self.intermediates.contains(&der) {
            return Ok(());
        }
        let mut all = self.intermediates.clone();
        all.push(der);
        *self = TrustStore::new(self.root.clone(), all)?;
        Ok(())
    }

    /// Verify a node MIC: chains to root via a known intermediate (webpki, ed25519,
    /// EKU clientAuth or serverAuth), valid at `now_unix`, belongs to this fleet,
    /// node id in cert == NodeId of its key. Returns the facts.
    pub fn verify_mic(&self, der: &[u8], now_unix: i64) -> Result<VerifiedMic, CaError> {
        let intermediates: Vec<CertificateDer<'_>> = self
            .intermediates
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        let mic = verify_chain(
            der,
            &self.root,
            &intermediates,
            unix_time(now_unix)?,
            Usage::Any,
        )?;
        if mic.fleet_id != self.fleet_id {
            return Err(CaError::WrongFleet {
                found: mic.fleet_id,
                expected: self.fleet_id.clone(),
            });
        }
        Ok(mic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::Role;
    use crate::cert::tests::{fleet, profile};

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn verify_mic_accepts_fleet_mic() {
        let f = fleet("acme");
        let store = TrustStore::new(
            f.root.cert_der().to_vec(),
            vec![f.intermediate.cert_der().to_vec()],
        )
        .unwrap();
        assert_eq!(store.fleet_id(), "acme");
        assert_eq!(store.root_fingerprint(), f.root.fingerprint());
        let mic = store.verify_mic(&f.node_mic, now()).unwrap();
        assert_eq!(mic.node_id, f.node_key.node_id());
        assert_eq!(mic.role, Role::Node);
        assert_eq!(mic.fleet_id, "acme");
    }

    #[test]
    fn verify_mic_rejects_other_fleet() {
        let ours = fleet("acme");
        let theirs = fleet("evil");
        let store = TrustStore::new(
            ours.root.cert_der().to_vec(),
            vec![ours.intermediate.cert_der().to_vec()],
        )
        .unwrap();
        let err = store.verify_mic(&theirs.node_mic, now()).unwrap_err();
        assert!(matches!(err, CaError::ChainInvalid(_)), "{err}");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");

        // Even with their intermediate offered, it is not signed by our root.
        let err = TrustStore::new(
            ours.root.cert_der().to_vec(),
            vec![theirs.intermediate.cert_der().to_vec()],
        )
        .unwrap_err();
        assert!(matches!(err, CaError::ChainInvalid(_)), "{err}");

        // A second root that reuses our fleet name is still a different root.
        let impostor = fleet("acme");
        assert!(store.verify_mic(&impostor.node_mic, now()).is_err());
    }

    #[test]
    fn verify_mic_rejects_expired_and_not_yet_valid() {
        let f = fleet("acme");
        let store = TrustStore::new(
            f.root.cert_der().to_vec(),
            vec![f.intermediate.cert_der().to_vec()],
        )
        .unwrap();
        let err = store
            .verify_mic(&f.node_mic, now() + 2 * 24 * 3600)
            .unwrap_err();
        assert!(matches!(err, CaError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("renew"), "{err}");
        let err = store.verify_mic(&f.node_mic, now() - 3600).unwrap_err();
        assert!(matches!(err, CaError::NotYetValid { .. }), "{err}");
        assert!(store.verify_mic(&f.node_mic, -1).is_err());
    }

    #[test]
    fn verify_mic_requires_intermediate() {
        let f = fleet("acme");
        // Issued directly by the root: cryptographically fine, but not allowed.
        let direct = f
            .root
            .issue_mic(
                &f.node_key.public_key(),
                &profile("acme", &f.node_key, Role::Node),
            )
            .unwrap();
        let store = TrustStore::new(f.root.cert_der().to_vec(), vec![]).unwrap();
        let err = store.verify_mic(&direct, now()).unwrap_err();
        assert!(err.to_string().contains("anchor intermediate"), "{err}");
        // And an intermediate the store does not know cannot be used.
        let err = store.verify_mic(&f.node_mic, now()).unwrap_err();
        assert!(matches!(err, CaError::ChainInvalid(_)), "{err}");
    }

    #[test]
    fn trust_store_rejects_non_root() {
        let f = fleet("acme");
        assert!(TrustStore::new(f.intermediate.cert_der().to_vec(), vec![]).is_err());
        assert!(TrustStore::new(f.node_mic.clone(), vec![]).is_err());
        let mut store = TrustStore::new(f.root.cert_der().to_vec(), vec![]).unwrap();
        store
            .add_intermediate(f.intermediate.cert_der().to_vec())
            .unwrap();
        store
            .add_intermediate(f.intermediate.cert_der().to_vec())
            .unwrap();
        assert_eq!(store.intermediates().len(), 1);
        assert!(store.verify_mic(&f.node_mic, now()).is_ok());
    }

    #[test]
    fn tampered_mic_is_rejected() {
        let f = fleet("acme");
        let store = TrustStore::new(
            f.root.cert_der().to_vec(),
            vec![f.intermediate.cert_der().to_vec()],
        )
        .unwrap();
        // Flip a byte inside the site URI: the signature no longer covers the content.
        let mut mic = f.node_mic.clone();
        let pos = mic.windows(5).position(|w| w == b"lab-1").unwrap();
        mic[pos] = b'x';
        let err = store.verify_mic(&mic, now()).unwrap_err();
        assert!(matches!(err, CaError::ChainInvalid(_)), "{err}");
    }
}
