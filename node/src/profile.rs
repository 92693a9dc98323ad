//! The CLI's profile file and where each client setting comes from.
//!
//! A profile names a node API and the credentials to use with it, so admin commands need no
//! flags:
//!
//! ```toml
//! current = "prod"
//!
//! [profiles.prod]
//! api = "https://10.0.0.1:7600"
//! key_file = "~/.config/nexus/prod.key"
//! ca = "/etc/nexus/root.pem"
//! ```
//!
//! The file is `$NEXUS_CLI_CONFIG`, else `$XDG_CONFIG_HOME/nexus/config.toml`, else
//! `~/.config/nexus/config.toml`. (`NEXUS_CONFIG` already names the daemon's own config file, so
//! the CLI's file has its own variable.) The profile used is `--profile`, else `$NEXUS_PROFILE`,
//! else `current`. Every setting is taken from the first of: its flag, its environment variable,
//! the profile, the built-in default ([`resolve`]). Relative paths in the file are relative to
//! the file's directory; `~/` is the home directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::cli::{ClientArgs, Output};

/// Environment variable naming the profile file.
pub const CONFIG_ENV: &str = "NEXUS_CLI_CONFIG";
/// Environment variable naming the profile to use.
pub const PROFILE_ENV: &str = "NEXUS_PROFILE";
/// API URL used when nothing names one.
pub const DEFAULT_API: &str = "https://127.0.0.1:7600";

/// The profile file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    /// Profile used when neither `--profile` nor `NEXUS_PROFILE` names one.
    current: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

/// One `[profiles.NAME]` table.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Node API URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// API key (prefer `key_file`: this file is not a secret store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// File holding the API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Fleet root certificate (`<data-dir>/trust/root.pem` of any node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate (a MIC) to authenticate with instead of a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Key of `client_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

/// Where a setting came from, for messages that say what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// A profile of the profile file.
    Profile {
        /// Profile name.
        name: String,
        /// The file.
        file: PathBuf,
    },
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "{flag}"),
            Source::Env(var) => write!(f, "${var}"),
            Source::Profile { name, file } => {
                write!(f, "profile {name:?} in {}", file.display())
            }
            Source::Default => write!(f, "the default"),
        }
    }
}

/// A setting and where it came from.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub from: Source,
}

/// How the key is given.
#[derive(Debug, Clone)]
pub enum KeySpec {
    /// The key itself.
    Inline(String),
    /// A file holding it.
    File(PathBuf),
}

/// Every client setting, resolved: flags, then environment, then profile, then defaults.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Node API URL.
    pub api: Sourced<String>,
    /// The API key, if any source gives one.
    pub key: Option<Sourced<KeySpec>>,
    /// Fleet root certificate.
    pub ca_file: Option<Sourced<PathBuf>>,
    /// Client certificate and its key.
    pub client_cert: Option<Sourced<(PathBuf, PathBuf)>>,
    /// The profile in use, if any.
    pub profile: Option<String>,
    /// The profile file (whether or not it exists).
    pub file: PathBuf,
}

impl Resolved {
    /// How to point the CLI at another key, for messages.
    pub fn key_hint(&self) -> String {
        let profile = match &self.profile {
            Some(name) => format!("profile {name:?} ({})", self.file.display()),
            None => "a profile (`nexus profile set NAME --key-file FILE`)".into(),
        };
        format!("check --key / --key-file / NEXUS_API_KEY / {profile}")
    }

    /// How to point the CLI at another node, for messages.
    pub fn api_hint(&self) -> String {
        let profile = match &self.profile {
            Some(name) => format!("`nexus profile set {name} --api URL`"),
            None => "`nexus profile set NAME --api URL`".into(),
        };
        format!("set the node's API URL with --api URL, NEXUS_API or {profile}")
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The profile file's path.
pub fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = env(CONFIG_ENV) {
        return Ok(PathBuf::from(path));
    }
    if let Some(dir) = env("XDG_CONFIG_HOME") {
        return Ok(Path::new(&dir).join("nexus").join("config.toml"));
    }
    match env("HOME") {
        Some(home) => Ok(Path::new(&home)
            .join(".config")
            .join("nexus")
            .join("config.toml")),
        None => bail!(
            "cannot find the CLI profile file: HOME is not set; set {CONFIG_ENV}=FILE to name it"
        ),
    }
}

/// The profile file's text, or `None` when it does not exist.
fn read_text(file: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the CLI profile file {}", file.display()))
        }
    }
}

fn parse(file: &Path, text: &str) -> anyhow::Result<ProfileFile> {
    let parsed: ProfileFile = toml::from_str(text).map_err(|err| {
        // toml's message starts "TOML parse error at line L, column C" and quotes the line.
        anyhow::anyhow!(
            "the CLI profile file {} is malformed: {}",
            file.display(),
            err.to_string().trim_end()
        )
    })?;
    for name in parsed.profiles.keys() {
        check_profile_name(name).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    }
    Ok(parsed)
}

fn check_profile_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("profile name {name:?} must be 1-64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// A path from the profile file: `~/` is the home directory, relative paths are relative to
/// the file's directory.
fn file_path(file: &Path, path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = env("HOME")
    {
        return Path::new(&home).join(rest);
    }
    if path.is_relative() {
        return file.parent().unwrap_or(Path::new(".")).join(path);
    }
    path.to_path_buf()
}

/// Resolves the client settings of a command.
pub fn resolve(args: &ClientArgs) -> anyhow::Result<Resolved> {
    let file = config_path()?;
    // The profile asked for, and what asked for it (for messages).
    let asked: Option<(String, String)> = match (&args.profile, env(PROFILE_ENV)) {
        (Some(name), _) => Some((name.clone(), "--profile".into())),
        (None, Some(name)) => Some((name, format!("${PROFILE_ENV}"))),
        (None, None) => None,
    };
    let parsed = match read_text(&file)? {
        Some(text) => Some(parse(&file, &text)?),
        None => None,
    };
    let profile: Option<(String, Profile)> = match (&parsed, asked) {
        (None, Some((name, from))) => bail!(
            "profile {name:?} (from {from}) cannot be used: the CLI profile file {} does not exist; create it with `nexus profile set {name} --api URL --key-file FILE` (or set {CONFIG_ENV} to another file)",
            file.display()
        ),
        (None, None) => None,
        (Some(parsed), asked) => {
            let asked = asked.or_else(|| {
                let current = parsed.current.clone()?;
                Some((current, format!("`current` in {}", file.display())))
            });
            match asked {
                None => None,
                Some((name, from)) => match parsed.profiles.get(&name) {
                    Some(p) => Some((name, p.clone())),
                    None => {
                        let known: Vec<&str> = parsed.profiles.keys().map(String::as_str).collect();
                        bail!(
                            "no profile {name:?} (named by {from}) in {}: it has {}; add it with `nexus profile set {name} --api URL`",
                            file.display(),
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        )
                    }
                },
            }
        }
    };
    let from_profile = |name: &str| Source::Profile {
        name: name.to_string(),
        file: file.clone(),
    };

    let api = if let Some(api) = &args.api_url {
        Sourced {
            value: api.clone(),
            from: Source::Flag("--api"),
        }
    } else if let Some(api) = env("NEXUS_API") {
        Sourced {
            value: api,
            from: Source::Env("NEXUS_API"),
        }
    } else if let Some(api) = env("NEXUS_API_URL") {
        Sourced {
            value: api,
            from: Source::Env("NEXUS_API_URL"),
        }
    } else if let Some((name, Profile { api: Some(api), .. })) = &profile {
        Sourced {
            value: api.clone(),
            from: from_profile(name),
        }
    } else {
        Sourced {
            value: DEFAULT_API.to_string(),
            from: Source::Default,
        }
    };

    let client_cert = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => Some(Sourced {
            value: (cert.clone(), key.clone()),
            from: Source::Flag("--client-cert"),
        }),
        _ => match &profile {
            Some((
                name,
                Profile {
                    client_cert: Some(cert),
                    client_key: Some(key),
                    ..
                },
            )) => Some(Sourced {
                value: (file_path(&file, cert), file_path(&file, key)),
                from: from_profile(name),
            }),
            Some((
                _,
                Profile {
                    client_cert: Some(_),
                    client_key: None,
                    ..
                },
            ))
            | Some((
                _,
                Profile {
                    client_cert: None,
                    client_key: Some(_),
                    ..
                },
            )) => bail!(
                "{}: a profile's client_cert and client_key go together; set both or neither",
                file.display()
            ),
            _ => None,
        },
    };

    let key = if let Some(key) = &args.key {
        Some(Sourced {
            value: KeySpec::Inline(key.clone()),
            from: Source::Flag("--key"),
        })
    } else if let Some(path) = &args.key_file {
        Some(Sourced {
            value: KeySpec::File(path.clone()),
            from: Source::Flag("--key-file"),
        })
    } else if let Some(key) = env("NEXUS_API_KEY") {
        Some(Sourced {
            value: KeySpec::Inline(key),
            from: Source::Env("NEXUS_API_KEY"),
        })
    } else if let Some(path) = env("NEXUS_API_KEY_FILE") {
        Some(Sourced {
            value: KeySpec::File(PathBuf::from(path)),
            from: Source::Env("NEXUS_API_KEY_FILE"),
        })
    } else if args.client_cert.is_some() {
        // A certificate given on the command line is the credential; a profile's key would
        // silently change who is asking.
        None
    } else {
        match &profile {
            Some((name, Profile { key: Some(key), .. })) => Some(Sourced {
                value: KeySpec::Inline(key.clone()),
                from: from_profile(name),
            }),
            Some((
                name,
                Profile {
                    key_file: Some(path),
                    ..
                },
            )) => Some(Sourced {
                value: KeySpec::File(file_path(&file, path)),
                from: from_profile(name),
            }),
            _ => None,
        }
    };

    let ca_file = if let Some(path) = &args.ca_file {
        Some(Sourced {
            value: path.clone(),
            from: Source::Flag("--ca-file"),
        })
    } else if let Some(path) = env("NEXUS_CA_FILE") {
        Some(Sourced {
            value: PathBuf::from(path),
            from: Source::Env("NEXUS_CA_FILE"),
        })
    } else {
        match &profile {
            Some((name, Profile { ca: Some(path), .. })) => Some(Sourced {
                value: file_path(&file, path),
                from: from_profile(name),
            }),
            _ => None,
        }
    };

    Ok(Resolved {
        api,
        key,
        ca_file,
        client_cert,
        profile: profile.map(|(name, _)| name),
        file,
    })
}

// --- `nexus profile` ------------------------------------------------------------------------

/// What `nexus profile set` changes; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ProfileChange {
    /// Node API URL.
    pub api: Option<String>,
    /// API key.
    pub key: Option<String>,
    /// API key file.
    pub key_file: Option<PathBuf>,
    /// Fleet root certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub client_cert: Option<PathBuf>,
    /// Its key.
    pub client_key: Option<PathBuf>,
}

fn load_document(file: &Path) -> anyhow::Result<toml_edit::DocumentMut> {
    let text = read_text(file)?.unwrap_or_default();
    // The typed parse gives the errors users see; the editable one keeps their comments.
    parse(file, &text)?;
    text.parse::<toml_edit::DocumentMut>()
        .with_context(|| format!("the CLI profile file {} is malformed", file.display()))
}

fn save_document(file: &Path, doc: &toml_edit::DocumentMut) -> anyhow::Result<()> {
    let text = doc.to_string();
    parse(file, &text)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let tmp = file.with_extension("toml.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // The file may hold API keys: owner only.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))
}

fn absolute(flag: &str, path: &Path) -> anyhow::Result<PathBuf> {
    if path.starts_with("~") {
        return Ok(path.to_path_buf());
    }
    let abs = std::path::absolute(path)
        .with_context(|| format!("{flag} {}: cannot make the path absolute", path.display()))?;
    if !abs.exists() {
        eprintln!("warning: {flag} {} does not exist (yet)", abs.display());
    }
    Ok(abs)
}

fn path_value(path: &Path) -> anyhow::Result<toml_edit::Item> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(toml_edit::value(text))
}

/// `nexus profile set NAME ...`: creates or updates a profile; the first profile becomes
/// current.
pub fn set(name: &str, change: ProfileChange, make_current: bool) -> anyhow::Result<ExitCode> {
    check_profile_name(name)?;
    if let Some(api) = &change.api {
        crate::client::check_api_url(api, &Source::Flag("--api"))?;
    }
    let file = config_path()?;
    let mut doc = load_document(&file)?;
    if !doc.contains_key("profiles") {
        let mut table = toml_edit::Table::new();
        table.set_implicit(true);
        doc.insert("profiles", toml_edit::Item::Table(table));
    }
    let profiles = doc["profiles"]
        .as_table_mut()
        .with_context(|| format!("{}: `profiles` must be a table", file.display()))?;
    if !profiles.contains_key(name) {
        profiles.insert(name, toml_edit::Item::Table(toml_edit::Table::new()));
    }
    let table = profiles[name]
        .as_table_mut()
        .with_context(|| format!("{}: `profiles.{name}` must be a table", file.display()))?;
    if let Some(api) = change.api {
        table["api"] = toml_edit::value(api.trim_end_matches('/'));
    }
    if let Some(key) = change.key {
        table["key"] = toml_edit::value(key.trim());
        table.remove("key_file");
    }
    if let Some(path) = change.key_file {
        table["key_file"] = path_value(&absolute("--key-file", &path)?)?;
        table.remove("key");
    }
    if let Some(path) = change.ca {
        table["ca"] = path_value(&absolute("--ca", &path)?)?;
    }
    if let Some(path) = change.client_cert {
        table["client_cert"] = path_value(&absolute("--client-cert", &path)?)?;
    }
    if let Some(path) = change.client_key {
        table["client_key"] = path_value(&absolute("--client-key", &path)?)?;
    }
    let first = !doc.contains_key("current");
    if make_current || first {
        doc["current"] = toml_edit::value(name);
    }
    save_document(&file, &doc)?;
    let current = doc["current"].as_str() == Some(name);
    println!(
        "profile {name:?} saved in {}{}",
        file.display(),
        if current { " (current)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `nexus profile use NAME`.
pub fn use_profile(name: &str) -> anyhow::Result<ExitCode> {
    let file = config_path()?;
    let text = read_text(&file)?.with_context(|| {
        format!(
            "the CLI profile file {} does not exist: create a profile with `nexus profile set {name} --api URL --key-file FILE`",
            file.display()
        )
    })?;
    let parsed = parse(&file, &text)?;
    if !parsed.profiles.contains_key(name) {
        let known: Vec<&str> = parsed.profiles.keys().map(String::as_str).collect();
        bail!(
            "no profile {name:?} in {} (it has {}): add it with `nexus profile set {name} --api URL`",
            file.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    let mut doc = load_document(&file)?;
    doc["current"] = toml_edit::value(name);
    save_document(&file, &doc)?;
    println!("now using profile {name:?} ({})", file.display());
    Ok(ExitCode::SUCCESS)
}

/// `nexus profile delete NAME`.
pub fn delete(name: &str) -> anyhow::Result<ExitCode> {
    let file = config_path()?;
    let mut doc = load_document(&file)?;
    let removed = doc
        .get_mut("profiles")
        .and_then(toml_edit::Item::as_table_mut)
        .and_then(|t| t.remove(name));
    if removed.is_none() {
        bail!("no profile {name:?} in {}", file.display());
    }
    if doc.get("current").and_then(toml_edit::Item::as_str) == Some(name) {
        doc.remove("current");
    }
    save_document(&file, &doc)?;
    println!("profile {name:?} deleted from {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// One row of `nexus profile list`.
#[derive(Debug, Serialize)]
struct ProfileRow {
    name: String,
    current: bool,
    #[serde(flatten)]
    profile: Profile,
}

/// `nexus profile list`. Keys themselves are never printed.
pub fn list(output: Output) -> anyhow::Result<ExitCode> {
    let file = config_path()?;
    let parsed = match read_text(&file)? {
        Some(text) => parse(&file, &text)?,
        None => ProfileFile::default(),
    };
    let rows: Vec<ProfileRow> = parsed
        .profiles
        .into_iter()
        .map(|(name, mut profile)| {
            if profile.key.is_some() {
                profile.key = Some("(set)".into());
            }
            ProfileRow {
                current: parsed.current.as_deref() == Some(name.as_str()),
                name,
                profile,
            }
        })
        .collect();
    match output {
        Output::Table => {
            if rows.is_empty() {
                eprintln!(
                    "no profiles in {}: add one with `nexus profile set NAME --api URL --key-file FILE`",
                    file.display()
                );
            }
            crate::client::print_table(
                &["CURRENT", "NAME", "API", "AUTH", "CA"],
                rows.iter()
                    .map(|r| {
                        let p = &r.profile;
                        let auth = match (&p.key, &p.key_file, &p.client_cert) {
                            (Some(_), _, _) => "key".to_string(),
                            (None, Some(f), _) => format!("key_file {}", f.display()),
                            (None, None, Some(c)) => format!("client_cert {}", c.display()),
                            _ => "-".into(),
                        };
                        vec![
                            if r.current { "*".into() } else { String::new() },
                            r.name.clone(),
                            p.api.clone().unwrap_or_else(|| "-".into()),
                            auth,
                            p.ca.as_ref()
                                .map_or("-".into(), |c| c.display().to_string()),
                        ]
                    })
                    .collect(),
            );
        }
        output => crate::client::print_structured(output, &rows)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_files_name_the_line() {
        let file = Path::new("/tmp/x/config.toml");
        let err = parse(file, "current = \"a\"\n[profiles.a]\napi = \n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("/tmp/x/config.toml"), "{text}");
        assert!(text.contains("line 3"), "{text}");
        let err = parse(file, "[profiles.a]\napi = \"x\"\nkee = \"typo\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("line 3") && text.contains("kee"), "{text}");
        let err = parse(file, "[profiles.\"a b\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("profile name"));
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let file = Path::new("/etc/nexus/config.toml");
        assert_eq!(
            file_path(file, Path::new("root.pem")),
            Path::new("/etc/nexus/root.pem")
        );
        assert_eq!(file_path(file, Path::new("/abs/k")), Path::new("/abs/k"));
    }
}
