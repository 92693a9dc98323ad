//! Where the fleet's CA keys (the root and the anchor intermediates) live, behind one trait.
//!
//! * [`CaSigner`]: what a CA needs from its key: the raw ed25519 public key and signatures.
//! * [`NodeKey`] implements it for keys generated in memory (tests, and keys about to be written).
//! * [`FileKey`]: a PKCS#8 PEM file with mode 0600, optionally encrypted with a passphrase
//!   (PBES2: scrypt N = 2^17, r = 8, p = 1, and AES-256-CBC).
//! * [`Pkcs11Key`]: a key pair generated inside a PKCS#11 token (an HSM, or SoftHSM); the
//!   private key is sensitive and not extractable, so it never enters this process's memory.
//!
//! Every backend passes a sign/verify self-test when it is opened, and every signature a CA
//! puts into a certificate is verified against the public key first (see `RcgenSigner`), so a
//! misconfigured or faulty token fails loudly instead of issuing certificates nobody accepts.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use pkcs8::der::pem::{LineEnding, PemLabel};
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo, SecretDocument};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::CaError;
use crate::identity::{NodeKey, verify_signature};

/// A PIN or passphrase read from a file; wiped from memory when dropped.
pub type Secret = Zeroizing<String>;

/// A CA's signing key, wherever it is kept.
///
/// Implementations must be usable from several threads; a backend that is not (a PKCS#11
/// session) serializes internally.
pub trait CaSigner: Send + Sync {
    /// The raw 32-byte ed25519 public key.
    fn public_key(&self) -> [u8; 32];

    /// A pure ed25519 signature over `msg`.
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], CaError>;

    /// Where the key lives, for logs and error messages (never key material).
    fn describe(&self) -> String;

    /// The private key as unencrypted PKCS#8 PEM, when it is held in this process's memory;
    /// `None` for keys that stay inside a token.
    fn to_pkcs8_pem(&self) -> Option<String> {
        None
    }
}

impl CaSigner for NodeKey {
    fn public_key(&self) -> [u8; 32] {
        NodeKey::public_key(self)
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], CaError> {
        Ok(NodeKey::sign(self, msg))
    }

    fn describe(&self) -> String {
        format!("in-memory ed25519 key {}", self.node_id())
    }

    fn to_pkcs8_pem(&self) -> Option<String> {
        Some(NodeKey::to_pkcs8_pem(self))
    }
}

/// Signs a fresh message with `signer` and checks the signature against its public key.
///
/// Run when a backend is opened, so a token that signs with another key (or garbage) is
/// caught at start rather than at the first admission.
pub fn self_test(signer: &dyn CaSigner) -> Result<(), CaError> {
    let mut msg = b"nexus CA key self-test ".to_vec();
    msg.extend_from_slice(&rand::random::<[u8; 16]>());
    let sig = signer.sign(&msg)?;
    if verify_signature(&signer.public_key(), &msg, &sig) {
        Ok(())
    } else {
        Err(CaError::BadSignature {
            signer: signer.describe(),
        })
    }
}

/// Refuses a secret-holding file that group or others may access.
fn check_private_mode(path: &Path, meta: &fs::Metadata) -> Result<(), CaError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CaError::SecretFileMode {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// Reads a PIN or passphrase file: mode 0600 (or stricter), one trailing newline (LF or CRLF)
/// ignored, not empty.
pub fn read_secret_file(path: &Path, what: &'static str) -> Result<Secret, CaError> {
    let bad = |reason: String| CaError::SecretFile {
        what,
        path: path.display().to_string(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("it is not a regular file".into()));
    }
    check_private_mode(path, &meta)?;
    let bytes = Zeroizing::new(fs::read(path).map_err(|e| bad(e.to_string()))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("it is not UTF-8 text".into()))?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if text.is_empty() {
        return Err(bad("it is empty".into()));
    }
    Ok(Zeroizing::new(text.to_string()))
}

/// Creates `path` with mode 0600 (failing if it exists), writes `contents`, and syncs the
/// file and its directory.
fn write_new_private(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    let bad = |e: std::io::Error| CaError::KeyFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        fs::create_dir_all(parent).map_err(bad)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(bad)?;
    file.write_all(contents)
        .and_then(|_| file.sync_all())
        .map_err(bad)?;
    if let Some(parent) = parent {
        // The new directory entry must survive a crash too, not just the file's contents.
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(bad)?;
    }
    Ok(())
}

/// A CA key in a PKCS#8 PEM file (mode 0600), optionally passphrase-encrypted.
///
/// The key is decrypted into memory when loaded; use [`Pkcs11Key`] to keep it out of memory.
pub struct FileKey {
    key: NodeKey,
    path: PathBuf,
    encrypted: bool,
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKey")
            .field("path", &self.path)
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

impl FileKey {
    /// Generates a new key and writes it to `path` (which must not exist), encrypted when a
    /// passphrase is given.
    pub fn create(path: &Path, passphrase: Option<&str>) -> Result<FileKey, CaError> {
        FileKey::write(path, NodeKey::generate(), passphrase)
    }

    /// Writes `key` to `path` (which must not exist), encrypted when a passphrase is given.
    pub fn write(path: &Path, key: NodeKey, passphrase: Option<&str>) -> Result<FileKey, CaError> {
        let bad = |reason: String| CaError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let pem: Zeroizing<String> = match passphrase {
            None => Zeroizing::new(key.to_pkcs8_pem()),
            Some("") => return Err(bad("the passphrase is empty".into())),
            Some(passphrase) => {
                let der = Zeroizing::new(key.to_pkcs8_der());
                let info = PrivateKeyInfo::try_from(der.as_slice())
                    .map_err(|e| bad(format!("cannot encode the key: {e}")))?;
                info.encrypt(rand::rngs::OsRng, passphrase.as_bytes())
                    .and_then(|doc| {
                        doc.to_pem(EncryptedPrivateKeyInfo::PEM_LABEL, LineEnding::LF)
                            .map_err(Into::into)
                    })
                    .map_err(|e| bad(format!("cannot encrypt the key: {e}")))?
            }
        };
        write_new_private(path, pem.as_bytes())?;
        let file = FileKey {
            key,
            path: path.to_path_buf(),
            encrypted: passphrase.is_some(),
        };
        self_test(&file)?;
        Ok(file)
    }

    /// Loads a key file, refusing one that group or others can access. An encrypted file
    /// needs its passphrase; a passphrase given for an unencrypted file is not used.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<FileKey, CaError> {
        let bad = |reason: String| CaError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let meta = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        check_private_mode(path, &meta)?;
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
        let encrypted = text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----");
        let key = if encrypted {
            let Some(passphrase) = passphrase else {
                return Err(CaError::PassphraseRequired {
                    path: path.display().to_string(),
                });
            };
            let (label, doc) = SecretDocument::from_pem(text.trim())
                .map_err(|e| bad(format!("not a PEM file: {e}")))?;
            if label != EncryptedPrivateKeyInfo::PEM_LABEL {
                return Err(bad(format!("unexpected PEM block {label:?}")));
            }
            let info = EncryptedPrivateKeyInfo::try_from(doc.as_bytes())
                .map_err(|e| bad(format!("not an encrypted PKCS#8 key: {e}")))?;
            // A wrong passphrase shows as bad padding, or (rarely) as garbage that does not
            // parse as a key; both mean the same to the operator.
            let wrong = || CaError::WrongPassphrase {
                path: path.display().to_string(),
            };
            let der = info.decrypt(passphrase.as_bytes()).map_err(|_| wrong())?;
            NodeKey::from_pkcs8_der(der.as_bytes()).map_err(|_| wrong())?
        } else {
            NodeKey::from_pkcs8_pem(&text).map_err(|e| bad(e.to_string()))?
        };
        let file = FileKey {
            key,
            path: path.to_path_buf(),
            encrypted,
        };
        self_test(&file)?;
        Ok(file)
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file is passphrase-encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }
}

impl CaSigner for FileKey {
    fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], CaError> {
        Ok(self.key.sign(msg))
    }

    fn describe(&self) -> String {
        format!(
            "{} key file {}",
            if self.encrypted {
                "encrypted"
            } else {
                "unencrypted"
            },
            self.path.display()
        )
    }

    fn to_pkcs8_pem(&self) -> Option<String> {
        Some(self.key.to_pkcs8_pem())
    }
}

/// A PKCS#11 token holding CA keys: the module (shared library), the token's label, and the
/// file holding the user PIN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Token {
    /// Path of the vendor's PKCS#11 module (for SoftHSM: `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label (CKA_LABEL of the token, as `softhsm2-util --show-slots` shows it).
    pub label: String,
    /// File holding the token's user PIN (mode 0600; one trailing newline is ignored).
    pub pin_file: PathBuf,
}

/// DER of the PrintableString "edwards25519", the curve-name form of CKA_EC_PARAMS for
/// CKM_EC_EDWARDS_KEY_PAIR_GEN; tried first because older HSMs know only this one.
const EC_PARAMS_CURVE_NAME: &[u8] = b"\x13\x0cedwards25519";
/// DER of the OID 1.3.101.112 (id-Ed25519), the form PKCS#11 3.0 also allows; the fallback.
/// (SoftHSM 2.6.1 accepts both, and answers CKA_EC_POINT as a DER OCTET STRING.)
const EC_PARAMS_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Loaded PKCS#11 modules, one context per path for the whole process: a module may be
/// initialized only once, and two signers on one token share its login state anyway. They are
/// never finalized; the process's exit does that.
static MODULES: Mutex<Vec<(PathBuf, Pkcs11)>> = Mutex::new(Vec::new());

fn module(path: &Path) -> Result<Pkcs11, CaError> {
    let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, ctx)) = modules.iter().find(|(p, _)| p == path) {
        return Ok(ctx.clone());
    }
    let bad = |reason: String| CaError::HsmModule {
        module: path.display().to_string(),
        reason,
    };
    if !path.is_file() {
        return Err(bad("no such file".into()));
    }
    let ctx = Pkcs11::new(path).map_err(|e| bad(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another part of this process initialized it: it is usable all the same.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(bad(format!("C_Initialize failed: {}", ck_reason(&e)))),
    }
    modules.push((path.to_path_buf(), ctx.clone()));
    Ok(ctx)
}

/// A PKCS#11 error without the spec's paragraph-long descriptions.
fn ck_reason(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

/// Whether a failure means the session is gone (token removed, HSM restarted) and a new
/// session might work.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent,
            _
        )
    )
}

/// An ed25519 CA key pair inside a PKCS#11 token. Signing uses CKM_EDDSA on the token; the
/// private key is created sensitive and not extractable.
pub struct Pkcs11Key {
    token: Pkcs11Token,
    key_label: String,
    public: [u8; 32],
    pin: Secret,
    /// PKCS#11 sessions must not be used from two threads at once.
    session: Mutex<Option<Connected>>,
}

/// A logged-in session and the private key's handle in it.
struct Connected {
    session: Session,
    private: ObjectHandle,
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("token", &self.token)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Key {
    /// Generates a new ed25519 key pair labelled `key_label` inside the token, refusing to if
    /// a key with that label exists, and opens it.
    pub fn generate(token: &Pkcs11Token, key_label: &str) -> Result<Pkcs11Key, CaError> {
        let pin = read_secret_file(&token.pin_file, "HSM user PIN")?;
        let ctx = module(&token.module)?;
        let slot = find_token(&ctx, token)?;
        let session = login(&ctx, slot, token, &pin, true)?;
        let err = |operation| move |e: CkError| hsm_error(operation, token, &e);
        let existing = session
            .find_objects(&[Attribute::Label(key_label.as_bytes().to_vec())])
            .map_err(err("search for keys"))?;
        if !existing.is_empty() {
            return Err(CaError::HsmKeyExists {
                token: token.label.clone(),
                label: key_label.to_string(),
            });
        }
        // CKA_ID links the two halves of the pair, as PKCS#11 tools expect.
        let id = Sha256::digest(key_label.as_bytes())[..16].to_vec();
        let private_template = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(key_label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let mut last = None;
        for params in [EC_PARAMS_CURVE_NAME, EC_PARAMS_OID] {
            let public_template = vec![
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(params.to_vec()),
                Attribute::Label(key_label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            match session.generate_key_pair(
                &Mechanism::EccEdwardsKeyPairGen,
                &public_template,
                &private_template,
            ) {
                Ok(_) => {
                    last = None;
                    break;
                }
                // Tokens differ in which spelling of the curve they accept: try the other.
                Err(
                    e @ CkError::Pkcs11(
                        RvError::AttributeValueInvalid
                        | RvError::CurveNotSupported
                        | RvError::DomainParamsInvalid
                        | RvError::TemplateInconsistent,
                        _,
                    ),
                ) => last = Some(e),
                Err(e) => return Err(hsm_error("generate an ed25519 key pair", token, &e)),
            }
        }
        if let Some(e) = last {
            return Err(CaError::Hsm {
                operation: "generate an ed25519 key pair",
                token: token.label.clone(),
                reason: format!(
                    "{}: the token does not support ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN with \
                     edwards25519)",
                    ck_reason(&e)
                ),
            });
        }
        drop(session);
        Pkcs11Key::open_with_pin(token, key_label, pin)
    }

    /// Opens the existing key pair labelled `key_label` and runs the sign/verify self-test.
    pub fn open(token: &Pkcs11Token, key_label: &str) -> Result<Pkcs11Key, CaError> {
        let pin = read_secret_file(&token.pin_file, "HSM user PIN")?;
        Pkcs11Key::open_with_pin(token, key_label, pin)
    }

    fn open_with_pin(
        token: &Pkcs11Token,
        key_label: &str,
        pin: Secret,
    ) -> Result<Pkcs11Key, CaError> {
        let (connected, public) = connect(token, key_label, &pin)?;
        let key = Pkcs11Key {
            token: token.clone(),
            key_label: key_label.to_string(),
            public,
            pin,
            session: Mutex::new(Some(connected)),
        };
        self_test(&key)?;
        Ok(key)
    }

    /// The token.
    pub fn token(&self) -> &Pkcs11Token {
        &self.token
    }

    /// The key pair's CKA_LABEL.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }
}

impl CaSigner for Pkcs11Key {
    fn public_key(&self) -> [u8; 32] {
        self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], CaError> {
        let mut guard = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reconnected = false;
        loop {
            if guard.is_none() {
                let (connected, public) = connect(&self.token, &self.key_label, &self.pin)?;
                if public != self.public {
                    return Err(CaError::KeyMismatch);
                }
                *guard = Some(connected);
                reconnected = true;
            }
            let connected = guard.as_ref().expect("connected above");
            let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
            match connected.session.sign(&mechanism, connected.private, msg) {
                Ok(sig) => {
                    return sig.as_slice().try_into().map_err(|_| CaError::Hsm {
                        operation: "sign",
                        token: self.token.label.clone(),
                        reason: format!("the signature is {} bytes, not 64", sig.len()),
                    });
                }
                // The HSM restarted or the token was reinserted: log in again, once.
                Err(e) if session_lost(&e) && !reconnected => *guard = None,
                Err(e) => return Err(hsm_error("sign", &self.token, &e)),
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 key {:?} on token {:?} (module {})",
            self.key_label,
            self.token.label,
            self.token.module.display()
        )
    }
}

fn hsm_error(operation: &'static str, token: &Pkcs11Token, e: &CkError) -> CaError {
    CaError::Hsm {
        operation,
        token: token.label.clone(),
        reason: ck_reason(e),
    }
}

/// The slot of the initialized token labelled `token.label`.
fn find_token(ctx: &Pkcs11, token: &Pkcs11Token) -> Result<Slot, CaError> {
    let err = |e: CkError| CaError::HsmModule {
        module: token.module.display().to_string(),
        reason: format!("cannot list its tokens: {}", ck_reason(&e)),
    };
    let mut present = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(err)? {
        let info = ctx.get_token_info(slot).map_err(err)?;
        if !info.token_initialized() {
            continue;
        }
        let label = info.label().trim_end();
        if label == token.label {
            return Ok(slot);
        }
        present.push(format!("{label:?}"));
    }
    Err(CaError::HsmTokenNotFound {
        label: token.label.clone(),
        module: token.module.display().to_string(),
        present: if present.is_empty() {
            "none".into()
        } else {
            present.join(", ")
        },
    })
}

fn login(
    ctx: &Pkcs11,
    slot: Slot,
    token: &Pkcs11Token,
    pin: &Secret,
    read_write: bool,
) -> Result<Session, CaError> {
    let session = if read_write {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    }
    .map_err(|e| hsm_error("open a session", token, &e))?;
    let pin_file = token.pin_file.display();
    let login_error = |reason: String| CaError::HsmLogin {
        token: token.label.clone(),
        reason,
    };
    match session.login(UserType::User, Some(&AuthPin::from(pin.as_str()))) {
        // Login state is per token and application: another signer logged in already.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
            Err(login_error(format!(
                "the user PIN in {pin_file} is wrong: put the token's user PIN in that file \
                 (careful: each wrong PIN counts towards locking the token)"
            )))
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(login_error(
            "the user PIN is locked after too many wrong PINs: unlock or reset it with the \
             token's security officer PIN"
                .into(),
        )),
        Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => Err(login_error(
            "the token's user PIN was never set: initialize it (softhsm2-util --init-token \
             sets both PINs)"
                .into(),
        )),
        Err(e) => Err(login_error(ck_reason(&e))),
    }
}

/// Opens a read-only session, logs in, finds the key pair and reads its public key.
fn connect(
    token: &Pkcs11Token,
    key_label: &str,
    pin: &Secret,
) -> Result<(Connected, [u8; 32]), CaError> {
    let ctx = module(&token.module)?;
    let slot = find_token(&ctx, token)?;
    let session = login(&ctx, slot, token, pin, false)?;
    let err = |operation| move |e: CkError| hsm_error(operation, token, &e);
    let find = |class: ObjectClass, what: &'static str| -> Result<ObjectHandle, CaError> {
        let found = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::Label(key_label.as_bytes().to_vec()),
            ])
            .map_err(err("search for keys"))?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(CaError::HsmKeyNotFound {
                token: token.label.clone(),
                label: key_label.to_string(),
                what,
            }),
            more => Err(CaError::Hsm {
                operation: "find the key",
                token: token.label.clone(),
                reason: format!(
                    "{} {what}s are labelled {key_label:?}: it is ambiguous which one is the \
                     CA key; remove the extra ones",
                    more.len()
                ),
            }),
        }
    };
    let private = find(ObjectClass::PRIVATE_KEY, "private key")?;
    let public_handle = find(ObjectClass::PUBLIC_KEY, "public key")?;
    let attributes = session
        .get_attributes(public_handle, &[AttributeType::EcPoint])
        .map_err(err("read the public key"))?;
    let point = attributes
        .iter()
        .find_map(|a| match a {
            Attribute::EcPoint(point) => Some(point.as_slice()),
            _ => None,
        })
        .ok_or_else(|| CaError::Hsm {
            operation: "read the public key",
            token: token.label.clone(),
            reason: format!("the public key {key_label:?} has no CKA_EC_POINT"),
        })?;
    let public = ed25519_point(point).ok_or_else(|| CaError::Hsm {
        operation: "read the public key",
        token: token.label.clone(),
        reason: format!(
            "CKA_EC_POINT of {key_label:?} is {} bytes, not an ed25519 key (32 bytes, or a \
             DER OCTET STRING of 32 bytes)",
            point.len()
        ),
    })?;
    Ok((Connected { session, private }, public))
}

/// The raw key from CKA_EC_POINT: PKCS#11 3.0 says a DER OCTET STRING, some tokens give the
/// 32 bytes bare.
fn ed25519_point(point: &[u8]) -> Option<[u8; 32]> {
    match point {
        [0x04, 32, key @ ..] if key.len() == 32 => key.try_into().ok(),
        key if key.len() == 32 => key.try_into().ok(),
        _ => None,
    }
}

/// Adapter so rcgen signs with any [`CaSigner`], checking every signature before rcgen puts
/// it into a certificate.
///
/// rcgen's error type cannot carry ours: a failed signature leaves its [`CaError`] here for
/// [`RcgenSigner::error`] to return instead of rcgen's generic "remote key error".
pub(crate) struct RcgenSigner<'a> {
    signer: &'a dyn CaSigner,
    public: [u8; 32],
    failure: Mutex<Option<CaError>>,
}

impl<'a> RcgenSigner<'a> {
    pub(crate) fn new(signer: &'a dyn CaSigner) -> RcgenSigner<'a> {
        RcgenSigner {
            signer,
            public: signer.public_key(),
            failure: Mutex::new(None),
        }
    }

    /// The error to report for a failed rcgen call: the signer's own if signing failed.
    pub(crate) fn error(&self, err: rcgen::Error) -> CaError {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| CaError::Generate(err.to_string()))
    }
}

impl rcgen::PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        // For ed25519 the SPKI's subjectPublicKey BIT STRING is the raw 32-byte key.
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signed = self.signer.sign(msg).and_then(|sig| {
            if verify_signature(&self.public, msg, &sig) {
                Ok(sig.to_vec())
            } else {
                Err(CaError::BadSignature {
                    signer: self.signer.describe(),
                })
            }
        });
        signed.map_err(|e| {
            *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("nexus-ca-keys-")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn file_key_roundtrip() {
        let dir = dir();
        let path = dir.path().join("ca").join("root.key");
        let created = FileKey::create(&path, None).unwrap();
        assert!(!created.is_encrypted());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");

        let loaded = FileKey::load(&path, None).unwrap();
        assert_eq!(loaded.public_key(), created.public_key());
        let sig = loaded.sign(b"msg").unwrap();
        assert!(verify_signature(&created.public_key(), b"msg", &sig));
        assert!(loaded.describe().contains("unencrypted key file"));
        assert!(loaded.to_pkcs8_pem().is_some());
        // A passphrase for an unencrypted file is not needed, and not an error.
        assert!(FileKey::load(&path, Some("unused")).is_ok());

        // Never overwrites an existing key.
        let err = FileKey::create(&path, None).unwrap_err();
        assert!(matches!(err, CaError::KeyFile { .. }), "{err}");
        assert_eq!(
            FileKey::load(&path, None).unwrap().public_key(),
            created.public_key()
        );
    }

    #[test]
    fn file_key_encrypted_roundtrip_and_wrong_passphrase() {
        let dir = dir();
        let path = dir.path().join("intermediate.key");
        let created = FileKey::create(&path, Some("correct horse")).unwrap();
        assert!(created.is_encrypted());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{text}"
        );
        assert!(!text.contains("BEGIN PRIVATE KEY"));

        let loaded = FileKey::load(&path, Some("correct horse")).unwrap();
        assert!(loaded.is_encrypted());
        assert_eq!(loaded.public_key(), created.public_key());

        let err = FileKey::load(&path, Some("correct horsE")).unwrap_err();
        assert!(matches!(err, CaError::WrongPassphrase { .. }), "{err}");
        assert!(err.to_string().contains("passphrase is wrong"), "{err}");

        let err = FileKey::load(&path, None).unwrap_err();
        assert!(matches!(err, CaError::PassphraseRequired { .. }), "{err}");
        assert!(
            err.to_string().contains("NEXUS_KEY_PASSPHRASE_FILE"),
            "{err}"
        );

        // Standard PKCS#8 that other tools parse: PBES2, scrypt N = 2^17, AES-256-CBC. (`openssl
        // pkey` would refuse to decrypt it: its scrypt memory limit is 32 MiB, N = 2^17 needs
        // 128 MiB.)
        let out = std::process::Command::new("openssl")
            .args(["asn1parse", "-in"])
            .arg(&path)
            .output()
            .expect("this test needs the openssl command-line tool: run scripts/test");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for oid in [":PBES2", ":scrypt", ":020000", ":aes-256-cbc"] {
            assert!(text.contains(oid), "{oid} missing:\n{text}");
        }
    }

    #[test]
    fn file_key_with_loose_permissions_is_refused() {
        let dir = dir();
        let path = dir.path().join("root.key");
        FileKey::create(&path, None).unwrap();
        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = FileKey::load(&path, None).unwrap_err();
            assert!(matches!(err, CaError::SecretFileMode { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains("chmod 600"), "{text}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(FileKey::load(&path, None).is_ok());
    }

    #[test]
    fn secret_files_are_trimmed_and_checked() {
        let dir = dir();
        let path = dir.path().join("pin");
        write_new_private(&path, b"1234\n").unwrap();
        assert_eq!(read_secret_file(&path, "PIN").unwrap().as_str(), "1234");
        fs::remove_file(&path).unwrap();
        // Only one newline goes: a passphrase may itself end in whitespace.
        write_new_private(&path, b"pass \r\n").unwrap();
        assert_eq!(read_secret_file(&path, "PIN").unwrap().as_str(), "pass ");
        fs::remove_file(&path).unwrap();
        write_new_private(&path, b"\n").unwrap();
        let err = read_secret_file(&path, "PIN").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path, "PIN").unwrap_err();
        assert!(matches!(err, CaError::SecretFileMode { .. }), "{err}");
        let err = read_secret_file(&dir.path().join("missing"), "PIN").unwrap_err();
        assert!(matches!(err, CaError::SecretFile { .. }), "{err}");
    }

    #[test]
    fn missing_pkcs11_module_is_explained() {
        let token = Pkcs11Token {
            module: "/nonexistent/libpkcs11.so".into(),
            label: "nexus".into(),
            pin_file: "/nonexistent/pin".into(),
        };
        let err = module(&token.module).unwrap_err();
        assert!(matches!(err, CaError::HsmModule { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/libpkcs11.so"),
            "{err}"
        );
    }

    #[test]
    fn ec_point_forms() {
        let key = [7u8; 32];
        let mut wrapped = vec![0x04, 32];
        wrapped.extend_from_slice(&key);
        assert_eq!(ed25519_point(&wrapped), Some(key));
        assert_eq!(ed25519_point(&key), Some(key));
        assert_eq!(ed25519_point(&[0x04, 57]), None);
        assert_eq!(ed25519_point(&[1u8; 57]), None);
    }

    /// A backend that signs with a different key than it claims.
    struct Liar(NodeKey, NodeKey);

    impl CaSigner for Liar {
        fn public_key(&self) -> [u8; 32] {
            self.0.public_key()
        }
        fn sign(&self, msg: &[u8]) -> Result<[u8; 64], CaError> {
            Ok(self.1.sign(msg))
        }
        fn describe(&self) -> String {
            "liar".into()
        }
    }

    #[test]
    fn a_signer_with_the_wrong_key_fails_the_self_test() {
        let liar = Liar(NodeKey::generate(), NodeKey::generate());
        let err = self_test(&liar).unwrap_err();
        assert_eq!(
            err,
            CaError::BadSignature {
                signer: "liar".into()
            }
        );
        assert!(self_test(&NodeKey::generate()).is_ok());
    }

    /// A backend whose token went away.
    struct Gone(NodeKey);

    impl CaSigner for Gone {
        fn public_key(&self) -> [u8; 32] {
            self.0.public_key()
        }
        fn sign(&self, _: &[u8]) -> Result<[u8; 64], CaError> {
            Err(CaError::Hsm {
                operation: "sign",
                token: "t".into(),
                reason: "DeviceRemoved".into(),
            })
        }
        fn describe(&self) -> String {
            "gone".into()
        }
    }

    #[test]
    fn a_ca_reports_its_signers_own_error_and_never_uses_a_bad_signature() {
        use crate::cert::CertificateAuthority;
        use std::sync::Arc;

        let err = CertificateAuthority::new_fleet_root_with(
            "acme",
            Arc::new(Liar(NodeKey::generate(), NodeKey::generate())),
        )
        .unwrap_err();
        assert!(matches!(err, CaError::BadSignature { .. }), "{err}");

        // The intermediate's certificate needs only the root's signature; issuing needs its own.
        let root = CertificateAuthority::new_fleet_root("acme").unwrap();
        let anchor = NodeKey::generate();
        let intermediate = root
            .new_intermediate_with(
                "acme",
                anchor.node_id(),
                Arc::new(Gone(NodeKey::generate())),
            )
            .unwrap();
        let err = intermediate
            .issue_mic(
                &anchor.public_key(),
                &crate::cert::tests::profile("acme", &anchor, crate::cert::Role::Anchor),
            )
            .unwrap_err();
        assert!(err.to_string().contains("DeviceRemoved"), "{err}");
        assert!(matches!(err, CaError::Hsm { .. }), "{err}");
    }
}
