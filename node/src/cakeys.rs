//! Where an anchor's CA keys live: the key flags of `nexus init`, and `<data-dir>/ca/keys.toml`,
//! which `nexus run` reads to load the intermediate CA.
//!
//! Two backends:
//!
//! * `file` (the default): `ca/root.key` and `ca/intermediate.key`, PKCS#8 PEM with mode 0600,
//!   encrypted with a passphrase when `nexus init --key-passphrase-file` was given.
//! * `pkcs11`: both keys were generated inside a PKCS#11 token (an HSM) and never leave it;
//!   no key file exists under `ca/`.
//!
//! `ca/keys.toml` names the PIN or passphrase *file*, never the secret itself:
//!
//! ```toml
//! backend = "pkcs11"
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "nexus"
//! pin_file = "/etc/nexus/hsm.pin"
//! root_key_label = "nexus-root-<fleet id>"
//! intermediate_key_label = "nexus-anchor-<node id>"
//! ```
//!
//! ```toml
//! backend = "file"
//! passphrase_file = "/etc/nexus/ca.pass"   # only when the key files are encrypted
//! ```
//!
//! A data directory without `ca/keys.toml` (made before it existed) is read as `backend = "file"`
//! without a passphrase.
//!
//! The anchor's tenant CAs (see `tenant_ca.rs`) keep their keys in the same backend as its
//! intermediate: `ca/tenants/<tenant>.key` (0600, encrypted with the same passphrase when the
//! intermediate's is), or a key pair labelled `nexus-tenant-<anchor node id>-<tenant>` in the
//! same PKCS#11 token. Their certificates are `ca/tenants/<tenant>.pem` either way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use nexus_ca::{
    CaSigner, CertificateAuthority, FileKey, NodeId, NodeKey, Pkcs11Key, Pkcs11Token, Secret,
    read_secret_file,
};
use serde::{Deserialize, Serialize};

use crate::datadir::{self, DataDir};

/// Environment variable naming the passphrase file of encrypted CA key files; for `nexus run`
/// it overrides `passphrase_file` in `ca/keys.toml`.
pub const PASSPHRASE_FILE_ENV: &str = "NEXUS_KEY_PASSPHRASE_FILE";

/// Where `nexus init` puts the CA keys.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CaKeyFlags {
    /// PKCS#11 module (the HSM vendor's library) to generate and keep the fleet root and this
    /// anchor's CA keys in; needs --hsm-token and --hsm-pin-file.
    #[arg(
        long,
        env = "NEXUS_HSM_MODULE",
        value_name = "PATH",
        requires_all = ["hsm_token", "hsm_pin_file"]
    )]
    pub hsm_module: Option<PathBuf>,
    /// Label of the initialized PKCS#11 token to keep the CA keys on.
    #[arg(
        long,
        env = "NEXUS_HSM_TOKEN",
        value_name = "LABEL",
        requires_all = ["hsm_module", "hsm_pin_file"]
    )]
    pub hsm_token: Option<String>,
    /// File holding the token's user PIN (mode 0600). `nexus run` reads it again from this path.
    #[arg(
        long,
        env = "NEXUS_HSM_PIN_FILE",
        value_name = "FILE",
        requires_all = ["hsm_module", "hsm_token"]
    )]
    pub hsm_pin_file: Option<PathBuf>,
    /// File holding a passphrase (mode 0600) to encrypt the CA key files with. `nexus run`
    /// reads it again from this path (or from NEXUS_KEY_PASSPHRASE_FILE).
    #[arg(
        long,
        env = PASSPHRASE_FILE_ENV,
        value_name = "FILE",
        conflicts_with = "hsm_module"
    )]
    pub key_passphrase_file: Option<PathBuf>,
}

/// The contents of `ca/keys.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeysFile {
    /// `ca/root.key` and `ca/intermediate.key`.
    File {
        /// File holding the passphrase the key files are encrypted with; absent when they are
        /// not encrypted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        passphrase_file: Option<PathBuf>,
    },
    /// Key pairs inside a PKCS#11 token.
    Pkcs11 {
        /// The PKCS#11 module.
        module: PathBuf,
        /// The token's label.
        token: String,
        /// File holding the token's user PIN.
        pin_file: PathBuf,
        /// CKA_LABEL of the fleet root key pair.
        root_key_label: String,
        /// CKA_LABEL of this anchor's intermediate CA key pair.
        intermediate_key_label: String,
    },
}

impl KeysFile {
    /// One line for the operator: where the keys are.
    pub fn summary(&self, dir: &DataDir) -> String {
        match self {
            KeysFile::File { passphrase_file } => format!(
                "{} and {}{}",
                dir.ca_root_key().display(),
                dir.ca_key().display(),
                match passphrase_file {
                    Some(file) => format!(" (encrypted; passphrase in {})", file.display()),
                    None => " (unencrypted, mode 0600)".to_string(),
                }
            ),
            KeysFile::Pkcs11 {
                module,
                token,
                root_key_label,
                intermediate_key_label,
                ..
            } => format!(
                "PKCS#11 token {token:?} via {}: keys {root_key_label:?} and \
                 {intermediate_key_label:?}",
                module.display()
            ),
        }
    }
}

/// The CA keys `nexus init` made, and what to write to `ca/keys.toml`.
pub struct CaKeys {
    /// The fleet root's key.
    pub root: Arc<dyn CaSigner>,
    /// The first anchor's intermediate key.
    pub intermediate: Arc<dyn CaSigner>,
    /// Where they are.
    pub file: KeysFile,
}

/// `nexus init`'s key flags, checked before anything is written.
pub enum Plan {
    /// Key files, encrypted when a passphrase is given.
    File {
        passphrase: Option<(PathBuf, Secret)>,
    },
    /// A PKCS#11 token.
    Pkcs11 { token: Pkcs11Token },
}

impl Plan {
    /// Checks the flags and reads the passphrase or PIN file, so a mistake is reported before
    /// the data directory is created.
    pub fn from_flags(flags: &CaKeyFlags) -> anyhow::Result<Plan> {
        let absolute = |path: &Path, flag: &str| {
            std::path::absolute(path).with_context(|| format!("{flag} {}", path.display()))
        };
        match (&flags.hsm_module, &flags.hsm_token, &flags.hsm_pin_file) {
            (Some(module), Some(label), Some(pin_file)) => {
                if flags.key_passphrase_file.is_some() {
                    anyhow::bail!(
                        "--key-passphrase-file encrypts CA key files, but with --hsm-module the \
                         keys stay in the token: drop one of them"
                    );
                }
                if label.trim().is_empty() {
                    anyhow::bail!("--hsm-token must name the token's label");
                }
                let token = Pkcs11Token {
                    module: absolute(module, "--hsm-module")?,
                    label: label.clone(),
                    pin_file: absolute(pin_file, "--hsm-pin-file")?,
                };
                // Fail on an unreadable PIN file now, not after the directory exists.
                read_secret_file(&token.pin_file, "HSM user PIN")
                    .context("checking --hsm-pin-file")?;
                Ok(Plan::Pkcs11 { token })
            }
            (None, None, None) => {
                let passphrase = match &flags.key_passphrase_file {
                    None => None,
                    Some(file) => {
                        let file = absolute(file, "--key-passphrase-file")?;
                        let secret = read_secret_file(&file, "key passphrase")
                            .context("checking --key-passphrase-file")?;
                        Some((file, secret))
                    }
                };
                Ok(Plan::File { passphrase })
            }
            // clap's `requires` catches this first; kept for callers that build flags by hand.
            _ => anyhow::bail!(
                "--hsm-module, --hsm-token and --hsm-pin-file go together: give all three to \
                 keep the CA keys in a PKCS#11 token, or none for key files"
            ),
        }
    }

    /// Creates the fleet root's and the first anchor's CA keys: new files under `ca/`, or new
    /// key pairs in the token labelled `nexus-root-<fleet>` and `nexus-anchor-<node id>`.
    pub fn create(&self, dir: &DataDir, fleet_id: &str, anchor: NodeId) -> anyhow::Result<CaKeys> {
        match self {
            Plan::File { passphrase } => {
                let secret = passphrase.as_ref().map(|(_, s)| s.as_str());
                let root = FileKey::create(&dir.ca_root_key(), secret)?;
                let intermediate = FileKey::create(&dir.ca_key(), secret)?;
                Ok(CaKeys {
                    root: Arc::new(root),
                    intermediate: Arc::new(intermediate),
                    file: KeysFile::File {
                        passphrase_file: passphrase.as_ref().map(|(p, _)| p.clone()),
                    },
                })
            }
            Plan::Pkcs11 { token } => {
                let root_key_label = format!("nexus-root-{fleet_id}");
                let intermediate_key_label = format!("nexus-anchor-{anchor}");
                let root = Pkcs11Key::generate(token, &root_key_label)?;
                let intermediate = Pkcs11Key::generate(token, &intermediate_key_label)?;
                Ok(CaKeys {
                    root: Arc::new(root),
                    intermediate: Arc::new(intermediate),
                    file: KeysFile::Pkcs11 {
                        module: token.module.clone(),
                        token: token.label.clone(),
                        pin_file: token.pin_file.clone(),
                        root_key_label,
                        intermediate_key_label,
                    },
                })
            }
        }
    }
}

/// Writes `ca/keys.toml`.
pub fn write(dir: &DataDir, keys: &KeysFile) -> anyhow::Result<()> {
    let text = toml::to_string(keys).context("serializing ca/keys.toml")?;
    datadir::write_public(
        &dir.ca_keys(),
        &format!(
            "# Where this anchor's CA keys live; written by `nexus init`, read by `nexus run`.\n\
             # It names the PIN or passphrase file, never the secret itself.\n{text}"
        ),
    )
}

/// Reads `ca/keys.toml`; a data directory without one keeps unencrypted key files.
pub fn read(dir: &DataDir) -> anyhow::Result<KeysFile> {
    let path = dir.ca_keys();
    if !path.exists() {
        return Ok(KeysFile::File {
            passphrase_file: None,
        });
    }
    toml::from_str(&datadir::read(&path)?).with_context(|| {
        format!(
            "{} is not valid: expected backend = \"file\" (with an optional passphrase_file) or \
             backend = \"pkcs11\" with module, token, pin_file, root_key_label and \
             intermediate_key_label",
            path.display()
        )
    })
}

/// The passphrase of file-backed CA keys: from the file `NEXUS_KEY_PASSPHRASE_FILE` names, else
/// from the one `ca/keys.toml` names; `None` when the keys are not encrypted.
fn passphrase(named: Option<&PathBuf>) -> anyhow::Result<Option<Secret>> {
    let from_env = std::env::var_os(PASSPHRASE_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    Ok(match from_env.as_ref().or(named) {
        Some(file) => Some(read_secret_file(file, "key passphrase")?),
        None => None,
    })
}

/// Loads this anchor's intermediate CA with the key backend `ca/keys.toml` names. For key
/// files, `NEXUS_KEY_PASSPHRASE_FILE` overrides the passphrase file named there.
///
/// Blocks: decrypting a key file runs scrypt, and a token may be slow to log in.
pub fn load_anchor_ca(dir: &DataDir) -> anyhow::Result<CertificateAuthority> {
    let keys = read(dir)?;
    let signer: Arc<dyn CaSigner> = match &keys {
        KeysFile::File { passphrase_file } => {
            let passphrase = passphrase(passphrase_file.as_ref())?;
            Arc::new(FileKey::load(
                &dir.ca_key(),
                passphrase.as_ref().map(|s| s.as_str()),
            )?)
        }
        KeysFile::Pkcs11 {
            module,
            token,
            pin_file,
            intermediate_key_label,
            ..
        } => Arc::new(Pkcs11Key::open(
            &Pkcs11Token {
                module: module.clone(),
                label: token.clone(),
                pin_file: pin_file.clone(),
            },
            intermediate_key_label,
        )?),
    };
    let ca = CertificateAuthority::load_with(&datadir::read(&dir.ca_cert())?, signer)
        .with_context(|| format!("the CA key in {}", keys.summary(dir)))?;
    Ok(ca)
}

/// Loads the fleet root CA when this anchor holds its key (the fleet's first anchor), with the
/// backend `ca/keys.toml` names; `None` on anchors without it.
pub fn load_root_ca(dir: &DataDir) -> anyhow::Result<Option<CertificateAuthority>> {
    let keys = read(dir)?;
    let signer: Arc<dyn CaSigner> = match &keys {
        KeysFile::File { passphrase_file } => {
            if !dir.ca_root_key().exists() {
                return Ok(None);
            }
            let passphrase = passphrase(passphrase_file.as_ref())?;
            Arc::new(FileKey::load(
                &dir.ca_root_key(),
                passphrase.as_ref().map(|s| s.as_str()),
            )?)
        }
        KeysFile::Pkcs11 {
            module,
            token,
            pin_file,
            root_key_label,
            ..
        } => Arc::new(Pkcs11Key::open(
            &Pkcs11Token {
                module: module.clone(),
                label: token.clone(),
                pin_file: pin_file.clone(),
            },
            root_key_label,
        )?),
    };
    let ca = CertificateAuthority::load_with(&datadir::read(&dir.trust_root())?, signer)
        .with_context(|| format!("the fleet root key in {}", keys.summary(dir)))?;
    Ok(Some(ca))
}

/// `ca/tenants/<tenant>.pem`: this anchor's CA certificate for `tenant`.
pub fn tenant_ca_cert(dir: &DataDir, tenant: &str) -> PathBuf {
    dir.root()
        .join("ca")
        .join("tenants")
        .join(format!("{tenant}.pem"))
}

/// `ca/tenants/<tenant>.key`: the key of this anchor's CA for `tenant` (file backend).
pub fn tenant_ca_key(dir: &DataDir, tenant: &str) -> PathBuf {
    dir.root()
        .join("ca")
        .join("tenants")
        .join(format!("{tenant}.key"))
}

/// The PKCS#11 label of this anchor's CA key for `tenant` (pkcs11 backend).
pub fn tenant_ca_key_label(anchor: NodeId, tenant: &str) -> String {
    format!("nexus-tenant-{anchor}-{tenant}")
}

fn pkcs11_token(module: &Path, token: &str, pin_file: &Path) -> Pkcs11Token {
    Pkcs11Token {
        module: module.to_path_buf(),
        label: token.to_string(),
        pin_file: pin_file.to_path_buf(),
    }
}

/// Makes a key for this anchor's CA for `tenant` in the backend `keys` names (the one holding
/// the anchor's intermediate key). A key left by an attempt that stopped before its certificate
/// was written is reused, so a crash never strands a tenant.
///
/// Blocks: scrypt for an encrypted file, a token login.
pub fn create_tenant_ca_key(
    dir: &DataDir,
    keys: &KeysFile,
    anchor: NodeId,
    tenant: &str,
) -> anyhow::Result<Arc<dyn CaSigner>> {
    match keys {
        KeysFile::File { passphrase_file } => {
            let path = tenant_ca_key(dir, tenant);
            let passphrase = passphrase(passphrase_file.as_ref())?;
            let secret = passphrase.as_ref().map(|s| s.as_str());
            if path.exists() {
                return Ok(Arc::new(FileKey::load(&path, secret)?));
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            Ok(Arc::new(FileKey::create(&path, secret)?))
        }
        KeysFile::Pkcs11 {
            module,
            token,
            pin_file,
            ..
        } => {
            let token = pkcs11_token(module, token, pin_file);
            let label = tenant_ca_key_label(anchor, tenant);
            match Pkcs11Key::generate(&token, &label) {
                Ok(key) => Ok(Arc::new(key)),
                Err(nexus_ca::CaError::HsmKeyExists { .. }) => {
                    Ok(Arc::new(Pkcs11Key::open(&token, &label)?))
                }
                Err(err) => Err(err.into()),
            }
        }
    }
}

/// Loads this anchor's CA for `tenant` (certificate `ca/tenants/<tenant>.pem`, key in the
/// backend `keys` names); `None` when there is no certificate yet.
///
/// Blocks: scrypt for an encrypted file, a token login.
pub fn load_tenant_ca(
    dir: &DataDir,
    keys: &KeysFile,
    anchor: NodeId,
    tenant: &str,
) -> anyhow::Result<Option<CertificateAuthority>> {
    let cert = tenant_ca_cert(dir, tenant);
    if !cert.exists() {
        return Ok(None);
    }
    let signer: Arc<dyn CaSigner> = match keys {
        KeysFile::File { passphrase_file } => {
            let passphrase = passphrase(passphrase_file.as_ref())?;
            Arc::new(FileKey::load(
                &tenant_ca_key(dir, tenant),
                passphrase.as_ref().map(|s| s.as_str()),
            )?)
        }
        KeysFile::Pkcs11 {
            module,
            token,
            pin_file,
            ..
        } => Arc::new(Pkcs11Key::open(
            &pkcs11_token(module, token, pin_file),
            &tenant_ca_key_label(anchor, tenant),
        )?),
    };
    let ca = CertificateAuthority::load_with(&datadir::read(&cert)?, signer)
        .with_context(|| format!("this anchor's CA for tenant {tenant} ({})", cert.display()))?;
    if ca.tenant() != Some(tenant) {
        anyhow::bail!(
            "{} is not a CA for tenant {tenant}: move it away and it is made again",
            cert.display()
        );
    }
    Ok(Some(ca))
}

/// A CSR signed with this anchor's CA key (to have the root re-certify it), PEM.
pub fn ca_csr(dir: &DataDir) -> anyhow::Result<String> {
    let ca = load_anchor_ca(dir)?;
    Ok(ca.csr_pem()?)
}

/// Stores the CA of a node just promoted to anchor: its new intermediate key (a 0600 key file),
/// the intermediate certificate and a `ca/keys.toml` naming the file backend.
pub fn install_promoted(dir: &DataDir, key: NodeKey, intermediate_pem: &str) -> anyhow::Result<()> {
    if dir.ca_key().exists() {
        anyhow::bail!(
            "{} already exists: this node already holds an anchor CA key",
            dir.ca_key().display()
        );
    }
    FileKey::write(&dir.ca_key(), key, None)?;
    datadir::write_public(&dir.ca_cert(), intermediate_pem)?;
    write(
        dir,
        &KeysFile::File {
            passphrase_file: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert_eq!(
            read(&data).unwrap(),
            KeysFile::File {
                passphrase_file: None
            }
        );
        let hsm = KeysFile::Pkcs11 {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token: "nexus".into(),
            pin_file: "/etc/nexus/pin".into(),
            root_key_label: "nexus-root-f".into(),
            intermediate_key_label: "nexus-anchor-n".into(),
        };
        write(&data, &hsm).unwrap();
        let text = std::fs::read_to_string(data.ca_keys()).unwrap();
        assert!(text.contains("backend = \"pkcs11\""), "{text}");
        assert!(text.contains("pin_file = \"/etc/nexus/pin\""), "{text}");
        assert_eq!(read(&data).unwrap(), hsm);

        std::fs::write(
            data.ca_keys(),
            "backend = \"file\"\npasphrase_file = \"x\"\n",
        )
        .unwrap();
        let err = format!("{:#}", read(&data).unwrap_err());
        assert!(err.contains("passphrase_file"), "{err}");
        std::fs::write(
            data.ca_keys(),
            "backend = \"file\"\npassphrase_file = \"/p\"\n",
        )
        .unwrap();
        assert_eq!(
            read(&data).unwrap(),
            KeysFile::File {
                passphrase_file: Some("/p".into())
            }
        );
    }

    #[test]
    fn tenant_ca_keys_are_files_encrypted_like_the_anchors() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let pass = dir.path().join("ca.pass");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pass)
                .unwrap();
            f.write_all(b"tenant ca passphrase\n").unwrap();
        }
        let keys = KeysFile::File {
            passphrase_file: Some(pass.clone()),
        };
        let root = CertificateAuthority::new_fleet_root("f1").unwrap();
        let anchor = NodeKey::generate().node_id();
        let anchor_ca = root.new_intermediate("f1", anchor).unwrap();
        assert!(
            load_tenant_ca(&data, &keys, anchor, "acme")
                .unwrap()
                .is_none()
        );
        let key = create_tenant_ca_key(&data, &keys, anchor, "acme").unwrap();
        let public = key.public_key();
        let text = std::fs::read_to_string(tenant_ca_key(&data, "acme")).unwrap();
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{text}"
        );
        // A key left without its certificate (a crash in between) is reused, not replaced.
        let again = create_tenant_ca_key(&data, &keys, anchor, "acme").unwrap();
        assert_eq!(again.public_key(), public);
        let ca = anchor_ca
            .new_tenant_ca_with("acme", key, std::time::Duration::from_secs(3600))
            .unwrap();
        datadir::write_public(&tenant_ca_cert(&data, "acme"), &ca.cert_pem()).unwrap();
        let loaded = load_tenant_ca(&data, &keys, anchor, "acme")
            .unwrap()
            .unwrap();
        assert_eq!(loaded.tenant(), Some("acme"));
        assert_eq!(loaded.public_key(), public);
        // Another tenant's certificate under this name is refused.
        let other = anchor_ca
            .new_tenant_ca_with(
                "globex",
                Arc::new(NodeKey::generate()),
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
        let wrong = tenant_ca_cert(&data, "globex");
        datadir::write_public(&wrong, &other.cert_pem()).unwrap();
        std::fs::copy(tenant_ca_key(&data, "acme"), tenant_ca_key(&data, "globex")).unwrap();
        let err = format!(
            "{:#}",
            load_tenant_ca(&data, &keys, anchor, "globex").unwrap_err()
        );
        assert!(
            err.contains("does not match") || err.contains("not a CA for"),
            "{err}"
        );
        assert_eq!(
            tenant_ca_key_label(anchor, "acme"),
            format!("nexus-tenant-{anchor}-acme")
        );
    }

    #[test]
    fn hsm_flags_go_together_and_exclude_a_passphrase() {
        let partial = CaKeyFlags {
            hsm_module: Some("/lib/x.so".into()),
            ..Default::default()
        };
        let err = Plan::from_flags(&partial).err().unwrap().to_string();
        assert!(err.contains("go together"), "{err}");
        let both = CaKeyFlags {
            hsm_module: Some("/lib/x.so".into()),
            hsm_token: Some("t".into()),
            hsm_pin_file: Some("/p".into()),
            key_passphrase_file: Some("/q".into()),
        };
        let err = Plan::from_flags(&both).err().unwrap().to_string();
        assert!(err.contains("drop one"), "{err}");
        let missing = CaKeyFlags {
            key_passphrase_file: Some("/nonexistent/pass".into()),
            ..Default::default()
        };
        let err = format!("{:#}", Plan::from_flags(&missing).err().unwrap());
        assert!(err.contains("/nonexistent/pass"), "{err}");
    }
}
