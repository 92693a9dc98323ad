//! The data directory layout and the files in it.
//!
//! ```text
//! <dir>/nexus.toml             config (addresses, timing) written by init/join
//! <dir>/nexus.db               SQLite: identity, tokens, membership, …
//! <dir>/node.key        0600   the node's ed25519 key (PKCS#8 PEM)
//! <dir>/node.pem               the node's MIC
//! <dir>/trust/root.pem         the fleet root certificate
//! <dir>/trust/intermediates.pem  anchor intermediate CA certificates
//! <dir>/ca/keys.toml           where the CA keys live: backend "file" or "pkcs11" (anchors only;
//!                              names the PIN/passphrase file, never the secret; see cakeys.rs)
//! <dir>/ca/root.key     0600   fleet root key (first anchor, file backend only; PKCS#8 PEM,
//!                              passphrase-encrypted when init had --key-passphrase-file)
//! <dir>/ca/intermediate.pem    this anchor's CA certificate (anchors only)
//! <dir>/ca/intermediate.key 0600  this anchor's CA key (file backend only; encrypted likewise)
//!                              With backend "pkcs11" both keys stay in the token: no key files.
//! <dir>/admin.key       0600   first fleet-admin API key (first anchor only)
//! <dir>/endpoints.json         addresses actually bound by the running node
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Paths inside one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Wraps `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// SQLite file.
    pub fn db(&self) -> PathBuf {
        self.root.join("nexus.db")
    }
    /// The audit log's SQLite file.
    pub fn audit_db(&self) -> PathBuf {
        self.root.join("audit.db")
    }
    /// Config file.
    pub fn config(&self) -> PathBuf {
        self.root.join("nexus.toml")
    }
    /// Node key.
    pub fn node_key(&self) -> PathBuf {
        self.root.join("node.key")
    }
    /// Node certificate.
    pub fn node_cert(&self) -> PathBuf {
        self.root.join("node.pem")
    }
    /// Fleet root certificate.
    pub fn trust_root(&self) -> PathBuf {
        self.root.join("trust").join("root.pem")
    }
    /// Known intermediates.
    pub fn trust_intermediates(&self) -> PathBuf {
        self.root.join("trust").join("intermediates.pem")
    }
    /// Fleet root key (first anchor, file backend).
    pub fn ca_root_key(&self) -> PathBuf {
        self.root.join("ca").join("root.key")
    }
    /// This anchor's intermediate certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca").join("intermediate.pem")
    }
    /// This anchor's intermediate key (file backend).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca").join("intermediate.key")
    }
    /// Where the CA keys live (`ca/keys.toml`).
    pub fn ca_keys(&self) -> PathBuf {
        self.root.join("ca").join("keys.toml")
    }
    /// First admin API key.
    pub fn admin_key(&self) -> PathBuf {
        self.root.join("admin.key")
    }
    /// Bound addresses of the running node.
    pub fn endpoints(&self) -> PathBuf {
        self.root.join("endpoints.json")
    }

    /// Creates the directory (0700) for a new identity; refuses one that already holds a node.
    pub fn create_fresh(&self) -> anyhow::Result<()> {
        if self.db().exists() || self.node_key().exists() {
            bail!(
                "{} already holds a Nexus node (found {}): start it with `nexus run --data-dir {}`, or choose an empty directory",
                self.root.display(),
                if self.db().exists() {
                    "nexus.db"
                } else {
                    "node.key"
                },
                self.root.display()
            );
        }
        for dir in [self.root.clone(), self.root.join("trust")] {
            fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set permissions on {}", self.root.display()))?;
        Ok(())
    }

    /// Checks that an existing data directory holds an enrolled node.
    pub fn require_enrolled(&self) -> anyhow::Result<()> {
        if !self.root.is_dir() {
            bail!(
                "data directory {} does not exist: create a fleet with `nexus init --data-dir {0}` or join one with `nexus join TOKEN --data-dir {0}`",
                self.root.display()
            );
        }
        for file in [
            self.db(),
            self.node_key(),
            self.node_cert(),
            self.trust_root(),
        ] {
            if !file.exists() {
                bail!(
                    "{} is missing from data directory {}: this directory does not hold an enrolled node (run `nexus init` or `nexus join` first)",
                    file.file_name()
                        .map(|f| f.to_string_lossy())
                        .unwrap_or_default(),
                    self.root.display()
                );
            }
        }
        Ok(())
    }
}

/// Reads a text file, naming it in the error.
pub fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes a secret: created new with mode 0600, synced.
pub fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (mode 0600)", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a public file atomically (temp file, fsync, rename).
pub fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
