//! CLI commands for the replicated configuration: route policies (tenant and site scoped),
//! tenants, firmware targets, fleet policies and settings, snapshots and the config status.
//!
//! Every collection works the same way ([`Collection`]): `list`, `get ID`, `create -f FILE`
//! (POST: refused if the id exists), `apply -f FILE` (PUT: create or replace) and `delete ID`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use serde_json::{Value, json};

use crate::cli::{ClientArgs, Output};
use crate::client::{
    Api, Cell, Column, all_pages, encode, print_structured, print_table, print_value, print_values,
    read_object, read_objects, with_query,
};

const ROUTE_COLUMNS: &[Column] = &[
    ("ID", "/id", Cell::Plain),
    ("NAME", "/name", Cell::Plain),
    ("PRIORITY", "/priority", Cell::Plain),
    ("ACTION", "/action/type", Cell::Plain),
    ("ENABLED", "/enabled", Cell::Plain),
    ("MODES", "/match/stream_modes", Cell::Plain),
    ("TYPES", "/match/message_types", Cell::Plain),
    ("CREATED", "/created_at", Cell::Millis),
    ("QUARANTINED", "/quarantined", Cell::Plain),
];

const TENANT_COLUMNS: &[Column] = &[
    ("ID", "/id", Cell::Plain),
    ("NAME", "/name", Cell::Plain),
    ("QUOTAS", "/quotas", Cell::Pairs),
    ("CREATED", "/created_at", Cell::Millis),
];

const FIRMWARE_COLUMNS: &[Column] = &[
    ("ID", "/id", Cell::Plain),
    ("VERSION", "/version", Cell::Plain),
    ("SELECTOR", "/selector", Cell::Pairs),
    ("BATCH", "/batch_size", Cell::Plain),
    ("MAX UNAVAILABLE %", "/max_unavailable_percent", Cell::Plain),
    ("HEALTH TIMEOUT S", "/health_timeout_s", Cell::Plain),
    ("CREATED", "/created_at", Cell::Millis),
    ("QUARANTINED", "/quarantined", Cell::Plain),
];

const SNAPSHOT_COLUMNS: &[Column] = &[
    ("ID", "/id", Cell::Plain),
    ("NAME", "/name", Cell::Plain),
    ("DOCUMENT", "/document", Cell::Plain),
    ("VERSION", "/version", Cell::Plain),
    ("CREATED BY", "/created_by", Cell::Plain),
    ("CREATED", "/created_at", Cell::Millis),
];

/// A collection of configuration objects under one path.
pub struct Collection {
    /// What one object is called in messages.
    noun: &'static str,
    /// Path of the collection.
    path: String,
    /// `?tenant=` of every request.
    tenant: Option<String>,
    /// Table columns.
    columns: &'static [Column],
}

impl Collection {
    /// Route policies of a tenant, or of one site with `site`.
    pub fn routes(site: Option<String>, tenant: Option<String>) -> Collection {
        Collection {
            noun: "route policy",
            path: match site {
                Some(site) => format!("/v1/sites/{}/routes", encode(&site)),
                None => "/v1/routes".into(),
            },
            tenant,
            columns: ROUTE_COLUMNS,
        }
    }

    /// Firmware targets of a tenant.
    pub fn firmware(tenant: Option<String>) -> Collection {
        Collection {
            noun: "firmware target",
            path: "/v1/firmware/targets".into(),
            tenant,
            columns: FIRMWARE_COLUMNS,
        }
    }

    /// Fleet-wide route policies.
    pub fn fleet_policies() -> Collection {
        Collection {
            noun: "fleet policy",
            path: "/v1/fleet/policies".into(),
            tenant: None,
            columns: ROUTE_COLUMNS,
        }
    }

    /// Tenants.
    pub fn tenants() -> Collection {
        Collection {
            noun: "tenant",
            path: "/v1/tenants".into(),
            tenant: None,
            columns: TENANT_COLUMNS,
        }
    }

    fn list_path(&self) -> String {
        with_query(&self.path, &[("tenant", self.tenant.as_deref())])
    }

    fn item_path(&self, id: &str) -> String {
        with_query(
            &format!("{}/{}", self.path, encode(id)),
            &[("tenant", self.tenant.as_deref())],
        )
    }

    /// `list`: every object, following pagination.
    pub async fn list(&self, args: &ClientArgs) -> anyhow::Result<ExitCode> {
        let api = Api::new(args)?;
        let items: Vec<Value> = all_pages(&api, &self.list_path()).await?;
        print_values(args.output, self.columns, &items)?;
        Ok(ExitCode::SUCCESS)
    }

    /// `get ID`.
    pub async fn get(&self, args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
        let api = Api::new(args)?;
        let item: Value = api.get(&self.item_path(id)).await?;
        print_value(args.output, self.columns, &item)?;
        Ok(ExitCode::SUCCESS)
    }

    /// `create -f FILE`: POSTs every object of the file, in order.
    pub async fn create(&self, args: &ClientArgs, file: &Path) -> anyhow::Result<ExitCode> {
        let objects = read_objects(file)?;
        let api = Api::new(args)?;
        self.write_all(&api, args.output, objects, Write::Create)
            .await
    }

    /// `apply -f FILE`: PUTs every object of the file (created or replaced), in order.
    pub async fn apply(&self, args: &ClientArgs, file: &Path) -> anyhow::Result<ExitCode> {
        let objects = read_objects(file)?;
        for (i, object) in objects.iter().enumerate() {
            if !object.get("id").is_some_and(Value::is_string) {
                bail!(
                    "{}: object {} has no \"id\": apply replaces objects by id, so every {} needs one",
                    file.display(),
                    i + 1,
                    self.noun
                );
            }
        }
        let api = Api::new(args)?;
        self.write_all(&api, args.output, objects, Write::Apply)
            .await
    }

    async fn write_all(
        &self,
        api: &Api,
        output: Output,
        objects: Vec<Value>,
        how: Write,
    ) -> anyhow::Result<ExitCode> {
        let mut written = Vec::new();
        let total = objects.len();
        for object in objects {
            let id = object
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let result = match how {
                Write::Create => {
                    api.request(reqwest::Method::POST, &self.list_path(), Some(&object))
                        .await
                }
                Write::Apply => {
                    api.request(reqwest::Method::PUT, &self.item_path(&id), Some(&object))
                        .await
                }
            };
            let reply = match result {
                Ok(reply) => reply,
                Err(err) if written.is_empty() => return Err(err),
                Err(err) => {
                    return Err(err.context(format!(
                        "{} of {total} written before this one failed",
                        written.len()
                    )));
                }
            };
            let value: Value = reply.json(&self.path)?;
            if output == Output::Table {
                let verb = match (how, reply.status.as_u16()) {
                    (Write::Apply, 200) => "replaced",
                    _ => "created",
                };
                println!(
                    "{} {} {verb}{}",
                    self.noun,
                    value.get("id").and_then(Value::as_str).unwrap_or(&id),
                    reply
                        .config_version()
                        .map(|v| format!(" (config version {v})"))
                        .unwrap_or_default()
                );
            }
            written.push(value);
        }
        match output {
            Output::Table => {}
            output if written.len() == 1 => print_structured(output, &written[0])?,
            output => print_structured(output, &written)?,
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `delete ID`.
    pub async fn delete(&self, args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
        let api = Api::new(args)?;
        let reply = api
            .request(reqwest::Method::DELETE, &self.item_path(id), None::<&()>)
            .await?;
        let version = reply.config_version();
        match args.output {
            Output::Table => println!(
                "{} {id} deleted{}",
                self.noun,
                version
                    .map(|v| format!(" (config version {v})"))
                    .unwrap_or_default()
            ),
            output => print_structured(
                output,
                &json!({"deleted": id, "kind": self.noun, "config_version": version}),
            )?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Clone, Copy)]
enum Write {
    Create,
    Apply,
}

/// `nexus tenants create ID [-f FILE] [--name NAME]`: the file holds the rest of the tenant
/// (quotas); its display name defaults to the id.
pub async fn tenant_create(
    args: &ClientArgs,
    id: &str,
    file: Option<&Path>,
    name: Option<String>,
    onboarding: TenantOnboarding,
) -> anyhow::Result<ExitCode> {
    let mut body = match file {
        Some(file) => read_object(file)?,
        None => json!({}),
    };
    let map = body.as_object_mut().expect("read_object returns objects");
    match map.get("id") {
        Some(Value::String(named)) if named != id => bail!(
            "the file names tenant {named:?} but the command names {id:?}: drop \"id\" from the file or use the same one"
        ),
        _ => {}
    }
    map.insert("id".into(), Value::String(id.to_string()));
    if let Some(name) = name {
        map.insert("name".into(), Value::String(name));
    } else if !map.contains_key("name") {
        map.insert("name".into(), Value::String(id.to_string()));
    }
    if onboarding.no_admin_key {
        if onboarding.admin_key_out.is_some() {
            bail!("--admin-key-out and --no-admin-key contradict each other: drop one");
        }
        map.insert("admin_key".into(), Value::Bool(false));
    }
    if let Some(ttl) = &onboarding.admin_key_ttl {
        map.insert("admin_key_ttl".into(), Value::String(ttl.clone()));
    }
    if onboarding.no_default_policies {
        map.insert("default_policies".into(), Value::Bool(false));
    }
    let api = Api::new(args)?;
    // The key file is created (empty, owner-only) before the tenant is, so a path that cannot
    // be written fails before the only copy of the secret exists.
    let key_file = match &onboarding.admin_key_out {
        Some(path) => Some((path.clone(), create_secret_file(path)?)),
        None => None,
    };
    let remove_key_file = || {
        if let Some((path, _)) = &key_file {
            let _ = std::fs::remove_file(path);
        }
    };
    let reply = match api
        .request(reqwest::Method::POST, "/v1/tenants", Some(&body))
        .await
    {
        Ok(reply) => reply,
        Err(err) => {
            remove_key_file();
            return Err(err.context(format!(
                "if the anchor was reached, tenant {id} may exist now (`nexus tenants get {id}`); \
                 its admin key is then lost: revoke it and create another with `nexus keys \
                 create --tenant {id} --role admin`"
            )));
        }
    };
    let mut value: Value = match reply.json("/v1/tenants") {
        Ok(value) => value,
        // The anchor refused (the error says why): nothing was created.
        Err(err) if !reply.status.is_success() => {
            remove_key_file();
            return Err(err);
        }
        Err(err) => {
            remove_key_file();
            return Err(err.context(format!(
                "tenant {id} may have been created but the answer was unreadable: check with \
                 `nexus tenants get {id}` and create an admin key with `nexus keys create \
                 --tenant {id} --role admin`"
            )));
        }
    };
    let secret = value
        .pointer("/admin_key/secret")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some((path, mut out)) = key_file {
        use std::io::Write as _;
        let Some(secret) = &secret else {
            let _ = std::fs::remove_file(&path);
            bail!(
                "tenant {id} was created, but the anchor returned no admin key to write to {}: \
                 create one with `nexus keys create --tenant {id} --role admin`",
                path.display()
            );
        };
        out.write_all(format!("{secret}\n").as_bytes())
            .and_then(|_| out.sync_all())
            .map_err(|e| {
                anyhow::anyhow!(
                    "tenant {id} was created, but its admin key could not be written to {}: {e}; \
                     the key is: {secret}",
                    path.display()
                )
            })?;
        if let Some(key) = value.pointer_mut("/admin_key/secret") {
            *key = Value::String(format!("(written to {})", path.display()));
        }
    }
    match args.output {
        Output::Table => {
            println!(
                "tenant {id} created{}",
                reply
                    .config_version()
                    .map(|v| format!(" (config version {v})"))
                    .unwrap_or_default()
            );
            match (&onboarding.admin_key_out, &secret) {
                (Some(path), Some(_)) => {
                    println!("admin API key written to {} (owner-only)", path.display())
                }
                (None, Some(secret)) => {
                    println!("admin API key (shown once, keep it safe): {secret}")
                }
                _ => {}
            }
            if value
                .get("certificate_authority")
                .is_some_and(Value::is_string)
            {
                println!("tenant CA created: its nodes' certificates chain through it");
            }
            if let Some(issuer) = value.get("oidc_issuer").and_then(Value::as_str) {
                println!("accepts OIDC tokens from {issuer}");
            }
            if let Some(policies) = value.get("default_policies").and_then(Value::as_array)
                && !policies.is_empty()
            {
                let ids: Vec<&str> = policies.iter().filter_map(Value::as_str).collect();
                println!("default policies: {}", ids.join(", "));
            }
        }
        output => print_structured(output, &value)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus tenants create` onboarding flags.
#[derive(Debug, Default, Clone)]
pub struct TenantOnboarding {
    /// Write the admin key's secret here instead of printing it.
    pub admin_key_out: Option<std::path::PathBuf>,
    /// Create no admin key.
    pub no_admin_key: bool,
    /// The admin key's lifetime.
    pub admin_key_ttl: Option<String>,
    /// Write no default policies.
    pub no_default_policies: bool,
}

/// Creates `path` for a secret: new (never overwrites), readable by the owner only.
fn create_secret_file(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "--admin-key-out {}: the file exists; choose a new path (an existing file is \
                 never overwritten)",
                path.display()
            )
        } else {
            anyhow::anyhow!("--admin-key-out {}: cannot create it: {e}", path.display())
        }
    })
}

/// `nexus tenants update ID -f FILE`: a JSON merge patch (RFC 7396) of the tenant: the fields
/// in the file change, `null` removes one, the rest stay.
pub async fn tenant_update(args: &ClientArgs, id: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let patch = read_object(file)?;
    let api = Api::new(args)?;
    let reply = api
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/tenants/{}", encode(id)),
            Some(&patch),
        )
        .await?;
    let value: Value = reply.json("/v1/tenants")?;
    match args.output {
        Output::Table => print_value(Output::Table, TENANT_COLUMNS, &value)?,
        output => print_structured(output, &value)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_settings(output: Output, settings: &Value) -> anyhow::Result<()> {
    match output {
        Output::Table => {
            let mut rows = Vec::new();
            if let Some(map) = settings.as_object() {
                for (key, value) in map {
                    rows.push(vec![
                        key.clone(),
                        match value {
                            Value::Null => "(default)".into(),
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        },
                    ]);
                }
            }
            print_table(&["SETTING", "VALUE"], rows);
            Ok(())
        }
        output => print_structured(output, settings),
    }
}

/// `nexus fleet settings get`.
pub async fn settings_get(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let settings: Value = api.get("/v1/fleet/settings").await?;
    print_settings(args.output, &settings)?;
    Ok(ExitCode::SUCCESS)
}

/// `nexus fleet settings set -f FILE`: replaces the settings (absent fields: the default).
pub async fn settings_set(args: &ClientArgs, file: &Path) -> anyhow::Result<ExitCode> {
    let body = read_object(file)?;
    let api = Api::new(args)?;
    let settings: Value = api
        .call(reqwest::Method::PUT, "/v1/fleet/settings", Some(&body))
        .await?;
    print_settings(args.output, &settings)?;
    Ok(ExitCode::SUCCESS)
}

/// `nexus config status`: per document, which versions run where, and what is quarantined on
/// the answering node.
pub async fn status(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let status: Value = api.get("/v1/config/status").await?;
    if args.output != Output::Table {
        print_structured(args.output, &status)?;
        return Ok(ExitCode::SUCCESS);
    }
    let empty = Vec::new();
    let documents = status["documents"].as_array().unwrap_or(&empty);
    let local = status["local"].as_array().unwrap_or(&empty);
    let mut names: Vec<&str> = documents
        .iter()
        .chain(local)
        .filter_map(|d| d["document"].as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut rows = Vec::new();
    let mut quarantined = Vec::new();
    for name in names {
        let spread = documents.iter().find(|d| d["document"] == name);
        let here = local.iter().find(|d| d["document"] == name);
        let versions = spread
            .and_then(|d| d["states"].as_array())
            .map(|states| {
                states
                    .iter()
                    .map(|s| format!("v{} on {}", s["version"], s["nodes"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "-".into());
        let converged = match spread.map(|d| &d["converged"]) {
            Some(Value::Bool(true)) => "yes",
            Some(Value::Bool(false)) => "no",
            _ => "-",
        };
        let held = here.map_or("-".into(), |d| format!("v{}", d["version"]));
        let count = here
            .and_then(|d| d["quarantined"].as_array())
            .map_or(0, Vec::len);
        for q in here
            .and_then(|d| d["quarantined"].as_array())
            .into_iter()
            .flatten()
        {
            quarantined.push(vec![
                name.to_string(),
                q["object"].as_str().unwrap_or_default().to_string(),
                crate::client::cell(q, "/reasons", Cell::Plain),
            ]);
        }
        rows.push(vec![
            name.to_string(),
            converged.into(),
            versions,
            held,
            count.to_string(),
        ]);
    }
    print_table(
        &["DOCUMENT", "CONVERGED", "VERSIONS", "HERE", "QUARANTINED"],
        rows,
    );
    if !quarantined.is_empty() {
        println!();
        print_table(&["DOCUMENT", "QUARANTINED OBJECT", "WHY"], quarantined);
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus config snapshots list [--document D]`.
pub async fn snapshots_list(
    args: &ClientArgs,
    document: Option<String>,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let page: Value = api
        .get(&with_query(
            "/v1/config/snapshots",
            &[("document", document.as_deref())],
        ))
        .await?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    print_values(args.output, SNAPSHOT_COLUMNS, &items)?;
    Ok(ExitCode::SUCCESS)
}

/// `nexus config snapshots get ID`.
pub async fn snapshots_get(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let snapshot: Value = api
        .get(&format!("/v1/config/snapshots/{}", encode(id)))
        .await?;
    print_value(args.output, SNAPSHOT_COLUMNS, &snapshot)?;
    Ok(ExitCode::SUCCESS)
}

/// `nexus config snapshots create NAME [--document D]`.
pub async fn snapshots_create(
    args: &ClientArgs,
    name: &str,
    document: Option<String>,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let mut body = json!({ "name": name });
    if let Some(document) = document {
        body["document"] = Value::String(document);
    }
    let snapshot: Value = api
        .call(reqwest::Method::POST, "/v1/config/snapshots", Some(&body))
        .await?;
    match args.output {
        Output::Table => println!(
            "snapshot {} of {} at config version {}: roll back to it with `nexus config snapshots rollback {}`",
            crate::client::cell(&snapshot, "/id", Cell::Plain),
            crate::client::cell(&snapshot, "/document", Cell::Plain),
            crate::client::cell(&snapshot, "/version", Cell::Plain),
            crate::client::cell(&snapshot, "/id", Cell::Plain),
        ),
        output => print_structured(output, &snapshot)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus config snapshots rollback ID`.
pub async fn snapshots_rollback(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let result: Value = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/config/snapshots/{}/rollback", encode(id)),
            None::<&()>,
        )
        .await?;
    match args.output {
        Output::Table if result["changed"] == true => println!(
            "{} rolled back to snapshot {id} (config version {})",
            crate::client::cell(&result, "/document", Cell::Plain),
            crate::client::cell(&result, "/version", Cell::Plain)
        ),
        Output::Table => println!(
            "{} already matches snapshot {id}: nothing changed",
            crate::client::cell(&result, "/document", Cell::Plain)
        ),
        output => print_structured(output, &result)?,
    }
    Ok(ExitCode::SUCCESS)
}
