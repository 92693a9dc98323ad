//! The error type for certificate, key and chain operations.
//!
//! Every message says what was wrong and, where there is one, what the operator
//! can do about it, because these errors end up printed by the `nexus` CLI.

/// Errors from keys, certificates, CSRs and chain verification.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CaError {
    /// A node id string was not 32 hex characters.
    #[error("invalid node id {input:?}: {reason} (a node id is exactly 32 hex characters)")]
    BadNodeId {
        /// What was given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A PEM document could not be read.
    #[error(
        "could not read the {what}: {reason}; expected a PEM file with a \
         '-----BEGIN {label}-----' block"
    )]
    BadPem {
        /// What the PEM was supposed to hold ("certificate", "private key", ...).
        what: &'static str,
        /// The PEM label expected.
        label: &'static str,
        /// What went wrong.
        reason: String,
    },

    /// A private key could not be decoded.
    #[error("invalid ed25519 private key: {0}; expected an unencrypted PKCS#8 ed25519 key")]
    BadKey(String),

    /// The private key does not belong to the certificate it was loaded with.
    #[error(
        "the private key does not match the certificate's public key: load the key file \
         that was generated together with this certificate"
    )]
    KeyMismatch,

    /// A certificate could not be parsed as X.509.
    #[error("invalid certificate: {0}")]
    BadCertificate(String),

    /// A certificate or CSR carries a key that is not ed25519.
    #[error("{what} uses a {found} key, but Nexus only accepts ed25519 keys")]
    NotEd25519 {
        /// Which object ("CSR", "certificate", ...).
        what: &'static str,
        /// The algorithm OID that was found.
        found: String,
    },

    /// A certificate signing request could not be parsed.
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),

    /// A CSR's self-signature does not verify.
    #[error(
        "the certificate signing request's signature is invalid: it was altered or was not \
         signed by the key it contains; generate a new CSR on the node"
    )]
    CsrSignatureInvalid,

    /// A certificate was expected to be a CA certificate but is not.
    #[error(
        "the certificate {subject:?} is not a CA certificate (basicConstraints CA:TRUE missing)"
    )]
    NotACa {
        /// Subject of the offending certificate.
        subject: String,
    },

    /// A fleet id, tenant or site name contains unusable characters.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Which name ("fleet id", "tenant", "site").
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why.
        reason: &'static str,
    },

    /// A MIC was requested for a profile whose node id is not that of the key.
    #[error(
        "node id mismatch: the {context} says node {claimed} but the public key belongs to \
         node {actual}"
    )]
    NodeIdMismatch {
        /// Where the claimed id came from ("MIC profile", "certificate").
        context: &'static str,
        /// The node id that was claimed.
        claimed: String,
        /// The node id derived from the key.
        actual: String,
    },

    /// A MIC validity of zero or one too long to represent.
    #[error("invalid certificate validity: {0}")]
    BadValidity(String),

    /// A certificate lacks a field Nexus needs (e.g. the node SAN URI).
    #[error("the certificate is not a Nexus machine identity certificate: {0}")]
    NotAMic(String),

    /// A certificate belongs to a different fleet.
    #[error("the certificate belongs to fleet {found:?} but fleet {expected:?} was expected")]
    WrongFleet {
        /// Fleet id found in the certificate.
        found: String,
        /// Fleet id that was expected.
        expected: String,
    },

    /// The certificate's validity period ended before the verification time.
    #[error(
        "the certificate expired at {not_after} (checked at {now}): renew it, or check \
         this machine's clock"
    )]
    Expired {
        /// The certificate's notAfter, RFC 3339.
        not_after: String,
        /// The verification time, RFC 3339.
        now: String,
    },

    /// The certificate's validity period starts after the verification time.
    #[error(
        "the certificate is not valid until {not_before} (checked at {now}): check this \
         machine's clock"
    )]
    NotYetValid {
        /// The certificate's notBefore, RFC 3339.
        not_before: String,
        /// The verification time, RFC 3339.
        now: String,
    },

    /// The chain does not verify up to the trust anchor.
    #[error("certificate chain is not valid: {0}")]
    ChainInvalid(String),

    /// Certificate generation failed inside rcgen.
    #[error("could not generate the certificate: {0}")]
    Generate(String),

    /// The certificate was revoked by the fleet.
    #[error(
        "the certificate of node {node} (serial {serial}) has been revoked: the node must join \
         again with a new token"
    )]
    Revoked {
        /// The node the certificate names.
        node: String,
        /// Its serial, lowercase hex.
        serial: String,
    },

    /// A certificate revocation list was refused.
    #[error("certificate revocation list refused: {0}")]
    BadCrl(String),

    /// A TLS configuration could not be built.
    #[error("could not build the TLS configuration: {0}")]
    Tls(String),
}
