//! What a certificate signing request asks for, beyond its key.

use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;

use crate::error::CaError;

/// The subject common name a PEM CSR asks for, if any (Nexus puts the node id there).
///
/// The CSR's signature is not checked here; [`crate::public_key_from_csr`] does that.
pub fn csr_common_name(csr_pem: &str) -> Result<Option<String>, CaError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
        CaError::BadPem {
            what: "certificate signing request",
            label: "CERTIFICATE REQUEST",
            reason: e.to_string(),
        }
    })?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CaError::BadCsr(format!("not a DER PKCS#10 request: {e}")))?;
    Ok(csr
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string))
}
