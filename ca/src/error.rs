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
        "the private key does not match the certificate's public key: use the key (file or \
         HSM key label) that was created together with this certificate"
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

    /// A MIC names another tenant than the tenant CA that issued it (or is asked of).
    #[error(
        "a MIC of tenant {mic_tenant:?} cannot come from the tenant CA of tenant {ca_tenant:?}: \
         a tenant CA certifies only its own tenant's machines; issue it from that tenant's CA"
    )]
    TenantMismatch {
        /// The tenant the MIC names.
        mic_tenant: String,
        /// The tenant of the tenant CA.
        ca_tenant: String,
    },

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

    /// Strict mode: the certificate is not (yet) proven to be in a transparency log.
    #[error(
        "the certificate of node {node} (serial {serial}) is not proven to be in an anchor's \
         transparency log; this node requires that (strict mode) and is looking it up: retry in \
         a moment, and if it persists the certificate was issued outside the fleet's CAs' \
         records"
    )]
    NotLogged {
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

    /// A CA key file could not be read, written or decoded. Nothing was changed on disk
    /// unless the reason says so.
    #[error("CA key file {path}: {reason}")]
    KeyFile {
        /// The key file.
        path: String,
        /// What went wrong.
        reason: String,
    },

    /// A key, PIN or passphrase file is readable or writable by group or others.
    #[error(
        "{path} holds a secret but its mode is {mode:04o} (group or others have access): \
         run `chmod 600 {path}`"
    )]
    SecretFileMode {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },

    /// A PIN or passphrase file could not be read or is empty.
    #[error("cannot use {path} as the {what}: {reason}")]
    SecretFile {
        /// What the file holds ("HSM user PIN", "key passphrase").
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },

    /// An encrypted key file was loaded without a passphrase.
    #[error(
        "the CA key file {path} is encrypted but no passphrase was given: name the file \
         holding its passphrase (nexus: `passphrase_file` in ca/keys.toml, or the \
         NEXUS_KEY_PASSPHRASE_FILE environment variable)"
    )]
    PassphraseRequired {
        /// The key file.
        path: String,
    },

    /// The passphrase does not decrypt the key file.
    #[error(
        "cannot decrypt the CA key file {path}: the passphrase is wrong (or the file is \
         damaged); check the passphrase file, which must hold exactly the passphrase the key \
         was encrypted with (one trailing newline is ignored)"
    )]
    WrongPassphrase {
        /// The key file.
        path: String,
    },

    /// The PKCS#11 module could not be loaded or initialized.
    #[error(
        "cannot load the PKCS#11 module {module}: {reason}; check the path of the HSM \
         vendor's PKCS#11 library (SoftHSM: /usr/lib/softhsm/libsofthsm2.so)"
    )]
    HsmModule {
        /// The module path.
        module: String,
        /// What went wrong.
        reason: String,
    },

    /// No initialized token carries the label.
    #[error(
        "no initialized token labelled {label:?} in PKCS#11 module {module} (tokens present: \
         {present}): check the token label, or initialize the token first (SoftHSM: \
         softhsm2-util --init-token --free --label {label:?})"
    )]
    HsmTokenNotFound {
        /// The label asked for.
        label: String,
        /// The module searched.
        module: String,
        /// Labels of the tokens found, comma separated (or "none").
        present: String,
    },

    /// Logging in as the token's user failed.
    #[error("cannot log in to token {token:?}: {reason}")]
    HsmLogin {
        /// The token label.
        token: String,
        /// What went wrong and what to do.
        reason: String,
    },

    /// No key pair with the label exists on the token.
    #[error(
        "token {token:?} holds no ed25519 {what} labelled {label:?}: check the key label in \
         ca/keys.toml, and that this is the token the fleet's CA keys were created on"
    )]
    HsmKeyNotFound {
        /// The token label.
        token: String,
        /// The key label.
        label: String,
        /// "private key" or "public key".
        what: &'static str,
    },

    /// A key with the label already exists, so a new one was not generated.
    #[error(
        "token {token:?} already holds a key labelled {label:?}; refusing to create a second \
         one: remove the old key from the token, or use another token"
    )]
    HsmKeyExists {
        /// The token label.
        token: String,
        /// The key label.
        label: String,
    },

    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {operation} failed on token {token:?}: {reason}")]
    Hsm {
        /// What was being done ("sign", "generate a key pair", ...).
        operation: &'static str,
        /// The token label.
        token: String,
        /// The PKCS#11 error.
        reason: String,
    },

    /// A key backend returned a signature that does not verify against its public key.
    #[error(
        "the CA key {signer} produced a signature that does not verify against its public \
         key: the key backend is misconfigured or faulty; nothing was signed with it"
    )]
    BadSignature {
        /// The backend, as `CaSigner::describe` says.
        signer: String,
    },
}
