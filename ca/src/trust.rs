//! The fleet's trust anchors as a node holds them, and MIC chain verification.
//!
//! Chains are checked by rustls-webpki (the same code rustls uses during TLS),
//! restricted to ed25519, and then the Nexus-specific facts are checked on top:
//! the path is root → anchor CA → MIC or root → anchor CA → tenant CA → MIC, a MIC issued
//! by a tenant CA names that CA's tenant (and is a node's), the MIC belongs to the expected
//! fleet, and its node id is that of its key.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter};

use crate::cert::{
    CertDer, CertificateAuthority, Role, TenantCaInfo, VerifiedMic, anchor_ca_node,
    ed25519_public_key, parse_cert, read_mic, root_fleet_id, sha256_fingerprint, tenant_ca_uri,
    verify_signed_by,
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
    let cas: Vec<CertificateDer<'_>> = path.intermediate_certificates().map(|c| c.der()).collect();
    let cas: Vec<&[u8]> = cas.iter().map(|c| c.as_ref()).collect();
    let mic = read_mic(end_entity)?;
    check_path(&mic, &cas)?;
    Ok(mic)
}

/// The Nexus shape of a verified path (`cas` from the MIC's issuer up, root excluded): one
/// anchor CA, or a tenant CA of the MIC's own tenant under the anchor CA that made it.
fn check_path(mic: &VerifiedMic, cas: &[&[u8]]) -> Result<(), CaError> {
    let anchor_of = |der: &[u8]| -> Result<Option<String>, CaError> {
        let cert = parse_cert(der)?;
        Ok(anchor_ca_node(&cert).filter(|_| tenant_ca_uri(&cert).ok().flatten().is_none()))
    };
    match cas {
        [] => Err(CaError::ChainInvalid(
            "the certificate is signed directly by the fleet root; node certificates must be \
             issued by an anchor intermediate CA"
                .into(),
        )),
        [issuer] => match anchor_of(issuer)? {
            Some(_) => Ok(()),
            None => Err(CaError::ChainInvalid(
                "the certificate's issuer under the fleet root is not an anchor CA; node \
                 certificates are issued by an anchor CA or by a tenant CA under one"
                    .into(),
            )),
        },
        [tenant_ca, anchor_ca] => {
            let info = CertificateAuthority::describe_tenant_ca(tenant_ca).map_err(|e| {
                CaError::ChainInvalid(format!(
                    "the CA between the anchor CA and the certificate is not a tenant CA: {e}"
                ))
            })?;
            let anchor = anchor_of(anchor_ca)?.ok_or_else(|| {
                CaError::ChainInvalid("a tenant CA must be certified by an anchor CA".into())
            })?;
            if anchor != info.anchor.to_hex() {
                return Err(CaError::ChainInvalid(format!(
                    "the tenant CA of tenant {:?} names anchor {} but was certified by the CA of \
                     anchor {anchor}",
                    info.tenant, info.anchor
                )));
            }
            if info.fleet_id != mic.fleet_id {
                return Err(CaError::WrongFleet {
                    found: mic.fleet_id.clone(),
                    expected: info.fleet_id,
                });
            }
            if info.tenant != mic.tenant {
                return Err(CaError::TenantMismatch {
                    mic_tenant: mic.tenant.clone(),
                    ca_tenant: info.tenant,
                });
            }
            if mic.role != Role::Node {
                return Err(CaError::ChainInvalid(format!(
                    "an {} certificate was issued by the tenant CA of tenant {:?}; tenant CAs \
                     certify nodes only",
                    mic.role, info.tenant
                )));
            }
            Ok(())
        }
        _ => Err(CaError::ChainInvalid(format!(
            "the path has {} CAs between the fleet root and the certificate; Nexus paths have an \
             anchor CA and at most one tenant CA",
            cas.len()
        ))),
    }
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

/// The fleet's trust anchors as a node holds them: the root, known anchor intermediates, and
/// known tenant CAs (each under one of those intermediates).
#[derive(Clone, Debug)]
pub struct TrustStore {
    root: CertDer,
    fleet_id: String,
    intermediates: Vec<CertDer>,
    tenant_cas: Vec<CertDer>,
}

impl TrustStore {
    /// Builds a trust store, checking that the root is a self-signed Nexus fleet root and that
    /// every other certificate is a CA signed by that root (an anchor CA) or a tenant CA signed
    /// by one of those (checked like [`TrustStore::add_tenant_ca`]), in any order.
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
        let mut anchors = Vec::new();
        let mut tenants = Vec::new();
        for der in intermediates {
            let cert = parse_cert(&der)?;
            let subject = cert.subject().to_string();
            if !cert.is_ca() {
                return Err(CaError::NotACa { subject });
            }
            if verify_signed_by(&cert, &root_key).is_ok() {
                if !anchors.contains(&der) {
                    anchors.push(der);
                }
            } else if tenant_ca_uri(&cert)?.is_some() {
                tenants.push(der);
            } else {
                return Err(CaError::ChainInvalid(format!(
                    "intermediate {subject:?} is not signed by the root of fleet {fleet_id:?}"
                )));
            }
        }
        let mut store = TrustStore {
            root: root_der,
            fleet_id,
            intermediates: anchors,
            tenant_cas: Vec::new(),
        };
        for der in tenants {
            store.add_tenant_ca(der)?;
        }
        Ok(store)
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

    /// The known anchor intermediates, DER (tenant CAs are in [`TrustStore::tenant_cas`]).
    pub fn intermediates(&self) -> &[CertDer] {
        &self.intermediates
    }

    /// The known tenant CAs, DER.
    pub fn tenant_cas(&self) -> &[CertDer] {
        &self.tenant_cas
    }

    /// Adds an anchor intermediate learned later (checked like in [`TrustStore::new`]).
    /// Adding one already present is a no-op.
    pub fn add_intermediate(&mut self, der: CertDer) -> Result<(), CaError> {
        if self.intermediates.contains(&der) {
            return Ok(());
        }
        let root = parse_cert(&self.root)?;
        let root_key = ed25519_public_key(&root, "the fleet root")?;
        let cert = parse_cert(&der)?;
        let subject = cert.subject().to_string();
        if !cert.is_ca() {
            return Err(CaError::NotACa { subject });
        }
        verify_signed_by(&cert, &root_key).map_err(|_| {
            CaError::ChainInvalid(format!(
                "intermediate {subject:?} is not signed by the root of fleet {:?}",
                self.fleet_id
            ))
        })?;
        self.intermediates.push(der);
        Ok(())
    }

    /// Adds a tenant CA, after checking it is a Nexus tenant CA of this fleet (pathlen 0,
    /// naming its tenant and anchor) signed by a known anchor CA of the anchor it names.
    /// Returns what it says; adding one already present changes nothing.
    pub fn add_tenant_ca(&mut self, der: CertDer) -> Result<TenantCaInfo, CaError> {
        let info = self.check_tenant_ca(&der)?;
        if !self.tenant_cas.contains(&der) {
            self.tenant_cas.push(der);
        }
        Ok(info)
    }

    /// The checks of [`TrustStore::add_tenant_ca`], without adding it.
    pub fn check_tenant_ca(&self, der: &[u8]) -> Result<TenantCaInfo, CaError> {
        let info = CertificateAuthority::describe_tenant_ca(der)?;
        if info.fleet_id != self.fleet_id {
            return Err(CaError::WrongFleet {
                found: info.fleet_id,
                expected: self.fleet_id.clone(),
            });
        }
        let cert = parse_cert(der)?;
        let issuer = cert.issuer().as_raw();
        let signed = self.intermediates.iter().any(|anchor_der| {
            parse_cert(anchor_der).is_ok_and(|anchor| {
                anchor.subject().as_raw() == issuer
                    && anchor_ca_node(&anchor).as_deref() == Some(info.anchor.to_hex().as_str())
                    && ed25519_public_key(&anchor, "the anchor CA")
                        .is_ok_and(|key| verify_signed_by(&cert, &key).is_ok())
            })
        });
        if !signed {
            return Err(CaError::ChainInvalid(format!(
                "the tenant CA of tenant {:?} is not signed by a known anchor CA of anchor {}; \
                 it is trusted once that anchor's CA is",
                info.tenant, info.anchor
            )));
        }
        Ok(info)
    }

    /// What a node presents in TLS for its MIC `mic_der`: `[mic, its tenant CA (when a known
    /// one issued it), anchor intermediates…, root]`. Only the issuing tenant CA is included,
    /// so the chain does not grow with the number of tenants.
    pub fn chain_for(&self, mic_der: &[u8]) -> Vec<CertDer> {
        let mut chain = vec![mic_der.to_vec()];
        if let Ok(mic) = parse_cert(mic_der) {
            let issuer = mic.issuer().as_raw();
            for ca in &self.tenant_cas {
                let Ok(cert) = parse_cert(ca) else { continue };
                let signed = cert.subject().as_raw() == issuer
                    && ed25519_public_key(&cert, "the tenant CA")
                        .is_ok_and(|key| verify_signed_by(&mic, &key).is_ok());
                if signed {
                    chain.push(ca.clone());
                }
            }
        }
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.root.clone());
        chain
    }

    /// Verify a node MIC: chains to root via a known anchor intermediate, and possibly a known
    /// tenant CA of the MIC's own tenant (webpki, ed25519, EKU clientAuth or serverAuth), valid
    /// at `now_unix`, belongs to this fleet, node id in cert == NodeId of its key. Returns the
    /// facts. A MIC whose tenant differs from its tenant CA's is refused
    /// ([`CaError::TenantMismatch`]).
    pub fn verify_mic(&self, der: &[u8], now_unix: i64) -> Result<VerifiedMic, CaError> {
        let intermediates: Vec<CertificateDer<'_>> = self
            .tenant_cas
            .iter()
            .chain(&self.intermediates)
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
    use crate::cert::tests::{fleet, forge_mic, legacy_intermediate, profile, tenant_fleet};
    use crate::identity::NodeKey;
    use std::sync::Arc;

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

    #[test]
    fn a_mic_through_a_known_tenant_ca_verifies() {
        let t = tenant_fleet("acme", "blue");
        let anchor = t.fleet.intermediate.cert_der().to_vec();
        let tenant_ca = t.tenant_ca.cert_der().to_vec();
        // Any order: anchor CAs are sorted from tenant CAs.
        let store = TrustStore::new(
            t.fleet.root.cert_der().to_vec(),
            vec![tenant_ca.clone(), anchor.clone()],
        )
        .unwrap();
        assert_eq!(store.intermediates(), std::slice::from_ref(&anchor));
        assert_eq!(store.tenant_cas(), std::slice::from_ref(&tenant_ca));
        let mic = store.verify_mic(&t.node_mic, now()).unwrap();
        assert_eq!(mic.tenant, "blue");
        assert_eq!(mic.node_id, t.node_key.node_id());
        // What the node presents: its tenant CA, then the anchor CAs and the root.
        assert_eq!(
            store.chain_for(&t.node_mic),
            vec![
                t.node_mic.clone(),
                tenant_ca.clone(),
                anchor.clone(),
                t.fleet.root.cert_der().to_vec()
            ]
        );
        // MICs of the anchor CA itself still verify, and present no tenant CA.
        assert!(store.verify_mic(&t.fleet.node_mic, now()).is_ok());
        assert_eq!(store.chain_for(&t.fleet.node_mic).len(), 3);

        // Not known yet: refused like an unknown anchor CA; learned later, accepted.
        let mut fresh = TrustStore::new(t.fleet.root.cert_der().to_vec(), vec![anchor]).unwrap();
        let err = fresh.verify_mic(&t.node_mic, now()).unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        let info = fresh.add_tenant_ca(tenant_ca.clone()).unwrap();
        assert_eq!(info.tenant, "blue");
        fresh.add_tenant_ca(tenant_ca).unwrap();
        assert_eq!(fresh.tenant_cas().len(), 1);
        assert!(fresh.verify_mic(&t.node_mic, now()).is_ok());
    }

    #[test]
    fn a_mic_of_another_tenant_from_a_tenant_ca_is_refused() {
        let t = tenant_fleet("acme", "blue");
        let store = TrustStore::new(
            t.fleet.root.cert_der().to_vec(),
            vec![
                t.fleet.intermediate.cert_der().to_vec(),
                t.tenant_ca.cert_der().to_vec(),
            ],
        )
        .unwrap();
        let key = NodeKey::generate();
        for tenant in ["green", "default"] {
            let mut p = profile("acme", &key, Role::Node);
            p.tenant = tenant.into();
            let forged = forge_mic(&t.tenant_ca, &key, &p);
            let err = store.verify_mic(&forged, now()).unwrap_err();
            assert_eq!(
                err,
                CaError::TenantMismatch {
                    mic_tenant: tenant.into(),
                    ca_tenant: "blue".into()
                }
            );
            // And through the mutual-TLS verifier, even with the chain presented.
            let trust = crate::FleetTrust::new(store.clone());
            let presented = [CertificateDer::from(t.tenant_ca.cert_der())];
            assert!(matches!(
                trust.verify_peer(&forged, &presented, now()),
                Err(CaError::TenantMismatch { .. })
            ));
        }
        // An anchor certificate from a tenant CA is refused too.
        let mut p = profile("acme", &key, Role::Anchor);
        p.tenant = "blue".into();
        let err = store
            .verify_mic(&forge_mic(&t.tenant_ca, &key, &p), now())
            .unwrap_err();
        assert!(err.to_string().contains("nodes only"), "{err}");
    }

    #[test]
    fn tenant_cas_must_chain_to_their_own_anchors_ca() {
        let t = tenant_fleet("acme", "blue");
        let root = t.fleet.root.cert_der().to_vec();
        let anchor = t.fleet.intermediate.cert_der().to_vec();
        let mut store = TrustStore::new(root.clone(), vec![anchor.clone()]).unwrap();
        // Another fleet's tenant CA (same fleet name, other root).
        let other = tenant_fleet("acme", "blue");
        let err = store
            .add_tenant_ca(other.tenant_ca.cert_der().to_vec())
            .unwrap_err();
        assert!(
            err.to_string().contains("not signed by a known anchor CA"),
            "{err}"
        );
        assert!(
            TrustStore::new(
                root.clone(),
                vec![anchor.clone(), other.tenant_ca.cert_der().to_vec()]
            )
            .is_err()
        );
        // An anchor CA is not a tenant CA, and a tenant CA is not an anchor CA.
        assert!(store.add_tenant_ca(anchor.clone()).is_err());
        assert!(
            store
                .add_intermediate(t.tenant_ca.cert_der().to_vec())
                .is_err()
        );
        // A second anchor's CA cannot pass off a tenant CA as the first anchor's: the SAN
        // names the anchor whose CA must have signed it.
        let second_key = NodeKey::generate();
        let second = t
            .fleet
            .root
            .new_intermediate("acme", second_key.node_id())
            .unwrap();
        store.add_intermediate(second.cert_der().to_vec()).unwrap();
        let theirs = second
            .new_tenant_ca_with(
                "blue",
                Arc::new(NodeKey::generate()),
                Duration::from_secs(3600),
            )
            .unwrap();
        let info = store.add_tenant_ca(theirs.cert_der().to_vec()).unwrap();
        assert_eq!(info.anchor, second_key.node_id());
        assert!(store.add_tenant_ca(t.tenant_ca.cert_der().to_vec()).is_ok());
        // Both anchors' blue CAs are in use at once.
        let key = NodeKey::generate();
        let mut p = profile("acme", &key, Role::Node);
        p.tenant = "blue".into();
        let mic = theirs.issue_mic(&key.public_key(), &p).unwrap();
        assert_eq!(store.verify_mic(&mic, now()).unwrap().tenant, "blue");
        assert!(store.verify_mic(&t.node_mic, now()).is_ok());
    }

    #[test]
    fn a_tenant_ca_under_a_pathlen_zero_anchor_ca_does_not_verify() {
        let f = fleet("acme");
        let legacy = legacy_intermediate(&f.root, f.anchor_key.node_id());
        // Made by force (the API refuses): the chain breaks the anchor CA's pathlen.
        let forced = crate::cert::tests::force_tenant_ca(&legacy, "blue");
        let store = TrustStore::new(
            f.root.cert_der().to_vec(),
            vec![legacy.cert_der().to_vec(), forced.cert_der().to_vec()],
        )
        .unwrap();
        let key = NodeKey::generate();
        let mut p = profile("acme", &key, Role::Node);
        p.tenant = "blue".into();
        let mic = forced.issue_mic(&key.public_key(), &p).unwrap();
        let err = store.verify_mic(&mic, now()).unwrap_err();
        assert!(err.to_string().contains("PathLen"), "{err}");
        // Its own MICs are fine.
        let own = legacy.issue_mic(&key.public_key(), &p).unwrap();
        assert!(store.verify_mic(&own, now()).is_ok());
    }
}
