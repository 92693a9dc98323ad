//! The client side of the CLI: one [`Api`] per command (settings resolved by
//! [`crate::profile`]), errors that say what to change, output as a table, JSON or YAML, input
//! files in YAML or JSON; and the commands for tokens, nodes, anchors and certificates. The
//! other resources' commands are in `client_config` (replicated configuration), `client_admin`
//! (API keys, audit, whoami) and `client_watch` (the event stream).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use nexus_api::wire::{
    Anchor, CreateToken, CreatedToken, ErrorBody, Mic, Node, Page, PromoteRequest, RevokeRequest,
    Revoked, Token,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::{ClientArgs, Output};
use crate::profile::{KeySpec, Resolved, Source};

/// Checks a label; the message says what is wrong (the rule replicated configuration applies,
/// `nexus_crdt::validate::label_problem`).
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    nexus_crdt::validate::label_problem(key, value).map_or(Ok(()), Err)
}

/// Checks an API URL; returns it without a trailing `/`.
pub fn check_api_url(url: &str, from: &Source) -> anyhow::Result<String> {
    let base = url.trim().trim_end_matches('/').to_string();
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(base),
        _ => bail!("the API URL {url:?} (from {from}) must be a URL like https://127.0.0.1:7600"),
    }
}

/// A node's API, as one command talks to it.
pub struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    key: Option<String>,
    settings: Resolved,
}

/// A successful answer.
pub struct Reply {
    /// Its status.
    pub status: reqwest::StatusCode,
    /// Its headers.
    pub headers: reqwest::header::HeaderMap,
    /// Its body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The `x-config-version` header, when the answer has one.
    pub fn config_version(&self) -> Option<u64> {
        self.headers
            .get("x-config-version")?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    /// The body as JSON (`null` when empty).
    pub fn json<T: DeserializeOwned>(&self, url: &str) -> anyhow::Result<T> {
        let body: &[u8] = if self.body.is_empty() {
            b"null"
        } else {
            &self.body
        };
        serde_json::from_slice(body).with_context(|| format!("unexpected answer from {url}"))
    }
}

/// Why a request failed.
pub enum CallError {
    /// No answer: the connection, TLS or a timeout failed.
    Unreachable(reqwest::Error),
    /// The API answered with an error status.
    Status {
        /// HTTP status.
        status: u16,
        /// The error code (`http_<status>` when the body is not the API's error shape).
        code: String,
        /// The server's message.
        message: String,
        /// `Retry-After`, seconds.
        retry_after: Option<String>,
    },
    /// The answer could not be read.
    Body(reqwest::Error),
}

fn read_pem_file(path: &Path, what: &str, from: &Source) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {} (from {from})", path.display()))
}

/// The error and its causes, `: `-separated. reqwest's own top line ("error sending request
/// for url (…)") is left out: the messages built from this already name the address.
fn error_chain(err: &dyn std::error::Error) -> String {
    let top = err.to_string();
    let mut parts = Vec::new();
    if !(top.starts_with("error sending request") && err.source().is_some()) {
        parts.push(top);
    }
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

impl Api {
    /// For public routes (no API key needed).
    pub(crate) fn new_public(args: &ClientArgs) -> anyhow::Result<Api> {
        Api::build(args, false, Some(Duration::from_secs(10)), None)
    }

    /// For a command: a credential is required.
    pub(crate) fn new(args: &ClientArgs) -> anyhow::Result<Api> {
        Api::build(args, true, Some(Duration::from_secs(10)), None)
    }

    /// For a long-lived stream: no overall deadline, but a silent connection is given up on
    /// after `idle` (the server sends keep-alives well within it).
    pub(crate) fn streaming(args: &ClientArgs, idle: Duration) -> anyhow::Result<Api> {
        Api::build(args, true, None, Some(idle))
    }

    fn build(
        args: &ClientArgs,
        need_key: bool,
        timeout: Option<Duration>,
        idle: Option<Duration>,
    ) -> anyhow::Result<Api> {
        if args.output == Output::Csv {
            // Refused before anything is sent: a command must not act and then fail to print.
            bail!("-o csv is only for `nexus tenants usage`: use -o table, json or yaml");
        }
        let settings = crate::profile::resolve(args)?;
        let key = match &settings.key {
            Some(key) => Some(match &key.value {
                KeySpec::Inline(k) => k.trim().to_string(),
                KeySpec::File(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| {
                        format!(
                            "cannot read the API key file {} (from {})",
                            path.display(),
                            key.from
                        )
                    })?;
                    let text = text.trim().to_string();
                    if text.is_empty() {
                        bail!(
                            "the API key file {} (from {}) is empty",
                            path.display(),
                            key.from
                        );
                    }
                    text
                }
            }),
            None if settings.client_cert.is_some() || !need_key => None,
            None => bail!(
                "no API key: pass --key KEY, --key-file FILE or set NEXUS_API_KEY (the first admin key is in <data-dir>/admin.key of the fleet's first anchor), save one in a profile (`nexus profile set NAME --api URL --key-file FILE`, file {}), or authenticate with a node certificate (--client-cert/--client-key)",
                settings.file.display()
            ),
        };
        let base = check_api_url(&settings.api.value, &settings.api.from)?;
        let http = Api::http_client(&settings, timeout, idle)?;
        Ok(Api {
            http,
            base,
            key,
            settings,
        })
    }

    fn http_client(
        settings: &Resolved,
        timeout: Option<Duration>,
        idle: Option<Duration>,
    ) -> anyhow::Result<reqwest::Client> {
        let base = &settings.api.value;
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(idle) = idle {
            builder = builder.read_timeout(idle);
        }
        if base.trim().starts_with("https://") {
            let Some(ca) = &settings.ca_file else {
                bail!(
                    "the API URL {base} (from {}) uses HTTPS: pass --ca-file <data-dir>/trust/root.pem (the fleet root certificate, on every node), set NEXUS_CA_FILE, or set `ca` in a profile (`nexus profile set NAME --ca FILE`)",
                    settings.api.from
                );
            };
            let root = nexus_ca::pem_to_der(&read_pem_file(
                &ca.value,
                "the fleet root certificate",
                &ca.from,
            )?)
            .with_context(|| {
                format!(
                    "{} (from {}) is not a PEM certificate",
                    ca.value.display(),
                    ca.from
                )
            })?
            .swap_remove(0);
            let client = match &settings.client_cert {
                Some(cert) => {
                    let (cert_file, key_file) = &cert.value;
                    let chain = nexus_ca::pem_to_der(&read_pem_file(
                        cert_file,
                        "the client certificate",
                        &cert.from,
                    )?)
                    .with_context(|| format!("{} is not a PEM certificate", cert_file.display()))?;
                    let key = nexus_ca::NodeKey::from_pkcs8_pem(&read_pem_file(
                        key_file,
                        "the client key",
                        &cert.from,
                    )?)
                    .with_context(|| {
                        format!("{} is not an ed25519 PKCS#8 key", key_file.display())
                    })?;
                    Some(
                        nexus_ca::Credentials::new(chain, &key)
                            .context("the client certificate and key do not belong together")?,
                    )
                }
                None => None,
            };
            builder = builder.use_preconfigured_tls(nexus_ca::api_client_config(root, client));
        }
        builder.build().context("building the HTTP client")
    }

    /// Sends a request; any non-2xx answer is a [`CallError::Status`].
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        headers: &[(&str, String)],
    ) -> Result<reqwest::Response, CallError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(CallError::Unreachable)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response.bytes().await.map_err(CallError::Body)?;
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(error) => (error.error.code, error.error.message),
            Err(_) => {
                let mut text = String::from_utf8_lossy(&bytes).trim().to_string();
                if text.len() > 500 {
                    let mut end = 500;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                    text.push('…');
                }
                (format!("http_{}", status.as_u16()), text)
            }
        };
        Err(CallError::Status {
            status: status.as_u16(),
            code,
            message,
            retry_after,
        })
    }

    /// Turns a failed call into a message that says what to do.
    pub(crate) fn explain(&self, err: CallError) -> anyhow::Error {
        let s = &self.settings;
        match err {
            CallError::Unreachable(err) if err.is_timeout() => anyhow::anyhow!(
                "the node API at {} (from {}) did not answer in time: is the node overloaded or the address wrong? {}",
                self.base,
                s.api.from,
                s.api_hint()
            ),
            CallError::Unreachable(err) => {
                let chain = error_chain(&err);
                let lower = chain.to_ascii_lowercase();
                let hint = if lower.contains("certificate") || lower.contains("issuer") {
                    match &s.ca_file {
                        Some(ca) => format!(
                            "the node's certificate did not verify against {} (from {}): use the root of this node's fleet, <data-dir>/trust/root.pem",
                            ca.value.display(),
                            ca.from
                        ),
                        None => "the node's certificate did not verify: pass the fleet root with --ca-file".into(),
                    }
                } else if lower.contains("refused") {
                    format!("is a node running there? {}", s.api_hint())
                } else if self.base.starts_with("http://") {
                    format!(
                        "nodes serve HTTPS unless started for plaintext: try https://{}; {}",
                        self.base.trim_start_matches("http://"),
                        s.api_hint()
                    )
                } else {
                    s.api_hint()
                };
                anyhow::anyhow!(
                    "cannot reach the node API at {} (from {}): {chain}; {hint}",
                    self.base,
                    s.api.from
                )
            }
            CallError::Body(err) => anyhow::anyhow!(
                "the answer from {} broke off: {}",
                self.base,
                error_chain(&err)
            ),
            CallError::Status {
                status: 401,
                message,
                ..
            } => match (&s.key, &s.client_cert) {
                (Some(key), _) => anyhow::anyhow!(
                    "the API key (from {}) was refused by {} ({message}): {}",
                    key.from,
                    self.base,
                    s.key_hint()
                ),
                (None, Some(cert)) => anyhow::anyhow!(
                    "the client certificate {} (from {}) was refused by {} ({message}): use a certificate of this fleet that is not revoked, or an API key",
                    cert.value.0.display(),
                    cert.from,
                    self.base
                ),
                (None, None) => anyhow::anyhow!(
                    "{} requires authentication ({message}): pass --key, --key-file or NEXUS_API_KEY",
                    self.base
                ),
            },
            CallError::Status {
                status: 403,
                code,
                message,
                ..
            } => {
                let who = match (&s.key, &s.client_cert) {
                    (Some(key), _) => format!("the API key from {}", key.from),
                    (None, Some(cert)) => format!("the client certificate from {}", cert.from),
                    (None, None) => "this caller".into(),
                };
                anyhow::anyhow!(
                    "{code} (403): {message} ({who} may not do this; `nexus whoami` shows its role)"
                )
            }
            CallError::Status {
                status: 429,
                code,
                message,
                retry_after,
            } => anyhow::anyhow!(
                "{code} (429): {message}{}",
                retry_after
                    .map(|s| format!("; retry in {s} s"))
                    .unwrap_or_default()
            ),
            CallError::Status {
                status,
                code,
                message,
                ..
            } => anyhow::anyhow!("{code} ({status}): {message}"),
        }
    }

    /// The settings this client was built from.
    pub(crate) fn settings(&self) -> &Resolved {
        &self.settings
    }

    /// A request whose whole answer is read; errors explained.
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<Reply> {
        let response = self
            .send(method, path, body, &[])
            .await
            .map_err(|e| self.explain(e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.explain(CallError::Body(e)))?
            .to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// A request whose answer is JSON of type `T`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<T> {
        let reply = self.request(method, path, body).await?;
        reply.json(&format!("{}{path}", self.base))
    }

    /// `GET path` as JSON.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(reqwest::Method::GET, path, None::<&()>).await
    }
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path` with the given query parameters (those that are `Some`).
pub fn with_query(path: &str, params: &[(&str, Option<&str>)]) -> String {
    let mut out = path.to_string();
    for (name, value) in params {
        if let Some(value) = value {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(name);
            out.push('=');
            out.push_str(&encode(value));
        }
    }
    out
}

pub(crate) fn print_structured<T: Serialize + ?Sized>(
    output: Output,
    value: &T,
) -> anyhow::Result<()> {
    match output {
        Output::Json | Output::Table => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_norway::to_string(value)?),
        Output::Csv => bail!("-o csv is only for `nexus tenants usage`: use -o json or -o yaml"),
    }
    Ok(())
}

pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}

/// How a table column renders its JSON field.
#[derive(Clone, Copy)]
pub enum Cell {
    /// As it is: strings bare, arrays joined with `,`, objects as compact JSON, absent `-`.
    Plain,
    /// Unix milliseconds as RFC 3339.
    Millis,
    /// An object as `key=value,…` (null fields left out).
    Pairs,
}

/// A table column over JSON objects: header, JSON pointer, rendering.
pub type Column = (&'static str, &'static str, Cell);

/// Renders one field for a table.
pub fn cell(value: &Value, pointer: &str, how: Cell) -> String {
    match (value.pointer(pointer), how) {
        (None | Some(Value::Null), _) => "-".into(),
        (Some(Value::Number(n)), Cell::Millis) => match n.as_u64() {
            Some(0) | None => "-".into(),
            Some(ms) => crate::rfc3339_ms(ms),
        },
        (Some(Value::Object(map)), Cell::Pairs) => {
            let pairs: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            if pairs.is_empty() {
                "-".into()
            } else {
                pairs.join(",")
            }
        }
        (Some(Value::String(s)), _) if s.is_empty() => "-".into(),
        (Some(Value::String(s)), _) => s.clone(),
        (Some(Value::Array(items)), _) if items.is_empty() => "-".into(),
        (Some(Value::Array(items)), _) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        (Some(Value::Object(map)), _) if map.is_empty() => "-".into(),
        (Some(other), _) => other.to_string(),
    }
}

/// Prints JSON objects as a table of `columns`, or as JSON / YAML.
pub fn print_values(output: Output, columns: &[Column], items: &[Value]) -> anyhow::Result<()> {
    match output {
        Output::Table => {
            print_table(
                &columns.iter().map(|c| c.0).collect::<Vec<_>>(),
                items
                    .iter()
                    .map(|item| columns.iter().map(|c| cell(item, c.1, c.2)).collect())
                    .collect(),
            );
            Ok(())
        }
        output => print_structured(output, items),
    }
}

/// Prints one JSON object as a table of `columns`, or as JSON / YAML.
pub fn print_value(output: Output, columns: &[Column], item: &Value) -> anyhow::Result<()> {
    match output {
        Output::Table => print_values(output, columns, std::slice::from_ref(item)),
        output => print_structured(output, item),
    }
}

/// Reads the objects of an input file (`-` is stdin): JSON when it starts with `{` or `[`,
/// else YAML (several documents separated by `---` allowed). A top-level list is a list of
/// objects.
pub fn read_objects(path: &Path) -> anyhow::Result<Vec<Value>> {
    let (name, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        ("standard input".to_string(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        (path.display().to_string(), text)
    };
    parse_objects(&name, &text)
}

/// [`read_objects`] on text already read; `name` is what messages call it.
pub fn parse_objects(name: &str, text: &str) -> anyhow::Result<Vec<Value>> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let documents: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        vec![serde_json::from_str(trimmed).with_context(|| format!("{name} is not valid JSON"))?]
    } else {
        use serde::Deserialize;
        let mut docs = Vec::new();
        for document in serde_norway::Deserializer::from_str(text) {
            let value = Value::deserialize(document)
                .with_context(|| format!("{name} is not valid YAML"))?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        docs
    };
    let mut objects = Vec::new();
    for document in documents {
        match document {
            Value::Array(items) => objects.extend(items),
            other => objects.push(other),
        }
    }
    if objects.is_empty() {
        bail!("{name} holds no object");
    }
    for (i, object) in objects.iter().enumerate() {
        if !object.is_object() {
            bail!(
                "{name}: item {} is {}, not an object with fields",
                i + 1,
                match object {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    Value::Array(_) => "a list",
                    Value::Object(_) => "an object",
                }
            );
        }
    }
    Ok(objects)
}

/// [`read_objects`] of a file that must hold exactly one object.
pub fn read_object(path: &Path) -> anyhow::Result<Value> {
    let mut objects = read_objects(path)?;
    if objects.len() != 1 {
        bail!(
            "{} holds {} objects; this command takes one",
            path.display(),
            objects.len()
        );
    }
    Ok(objects.swap_remove(0))
}

/// Every item of a paginated list, following `next_cursor`.
pub(crate) async fn all_pages<T: DeserializeOwned>(
    api: &Api,
    path: &str,
) -> anyhow::Result<Vec<T>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    // Bounded: 1,000 pages of up to 1,000 items.
    for _ in 0..1000 {
        let url = with_query(
            path,
            &[("limit", Some("1000")), ("cursor", cursor.as_deref())],
        );
        let page: Page<T> = api.get(&url).await?;
        items.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(items),
        }
    }
    bail!("{path} returned more than a million items")
}

/// `nexus token create`.
pub async fn token_create(
    args: &ClientArgs,
    ttl: Duration,
    uses: u32,
    tenant: Option<String>,
    site: Option<String>,
    labels: Vec<(String, String)>,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let request = CreateToken {
        ttl_seconds: Some(ttl.as_secs()),
        uses: Some(uses),
        tenant,
        site,
        labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let created: CreatedToken = api
        .call(reqwest::Method::POST, "/v1/tokens", Some(&request))
        .await?;
    match args.output {
        Output::Table => {
            println!("{}", created.token);
            eprintln!(
                "token {}: {} use(s), expires {} — join with: nexus join <token> --data-dir DIR",
                created.info.id, created.info.max_uses, created.info.expires_at
            );
        }
        output => print_structured(output, &created)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus token list`.
pub async fn token_list(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let tokens: Vec<Token> = all_pages(&api, "/v1/tokens").await?;
    match args.output {
        Output::Table => print_table(
            &["ID", "STATE", "USES", "TENANT", "SITE", "EXPIRES"],
            tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.state.clone(),
                        format!("{}/{}", t.uses, t.max_uses),
                        t.tenant.clone(),
                        t.site.clone().unwrap_or_else(|| "-".into()),
                        t.expires_at.clone(),
                    ]
                })
                .collect(),
        ),
        output => print_structured(output, &tokens)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus token revoke ID`.
pub async fn token_revoke(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let token: Token = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{id}"),
            None::<&()>,
        )
        .await?;
    match args.output {
        Output::Table => println!("token {} revoked", token.id),
        output => print_structured(output, &token)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn node_row(n: &Node) -> Vec<String> {
    vec![
        n.node_id.clone(),
        n.status.clone(),
        n.role.clone(),
        n.site.clone(),
        n.tenant_id.clone(),
        n.addresses.api.clone().unwrap_or_else(|| "-".into()),
        n.last_heartbeat.clone().unwrap_or_else(|| "-".into()),
    ]
}

const NODE_HEADERS: [&str; 7] = [
    "NODE ID",
    "STATUS",
    "ROLE",
    "SITE",
    "TENANT",
    "API",
    "LAST HEARTBEAT",
];

/// `nexus nodes list`.
pub async fn nodes_list(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let nodes: Vec<Node> = all_pages(&api, "/v1/nodes").await?;
    match args.output {
        Output::Table => print_table(&NODE_HEADERS, nodes.iter().map(node_row).collect()),
        output => print_structured(output, &nodes)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus nodes get ID`.
pub async fn nodes_get(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let node: Node = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/nodes/{id}"),
            None::<&()>,
        )
        .await?;
    match args.output {
        Output::Table => print_table(&NODE_HEADERS, vec![node_row(&node)]),
        output => print_structured(output, &node)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus nodes drain|decommission ID`.
pub async fn nodes_action(args: &ClientArgs, id: &str, action: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let node: Node = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/nodes/{id}/{action}"),
            None::<&()>,
        )
        .await?;
    match args.output {
        Output::Table => println!("node {} is {}", node.node_id, node.status),
        output => print_structured(output, &node)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn anchor_row(a: &Anchor) -> Vec<String> {
    vec![
        a.node_id.clone(),
        a.state.clone(),
        a.status.clone().unwrap_or_else(|| "-".into()),
        a.api.clone().unwrap_or_else(|| "-".into()),
        a.quic.clone().unwrap_or_else(|| "-".into()),
    ]
}

const ANCHOR_HEADERS: [&str; 5] = ["NODE", "STATE", "STATUS", "API", "QUIC"];

/// `nexus anchor list`.
pub async fn anchors_list(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let page: Page<Anchor> = api
        .call(reqwest::Method::GET, "/v1/anchors?limit=1000", None::<&()>)
        .await?;
    match args.output {
        Output::Table => print_table(&ANCHOR_HEADERS, page.items.iter().map(anchor_row).collect()),
        output => print_structured(output, &page.items)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus anchor promote NODE`.
pub async fn anchor_promote(args: &ClientArgs, node: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let anchor: Anchor = api
        .call(
            reqwest::Method::POST,
            "/v1/anchors",
            Some(&PromoteRequest {
                node_id: node.to_string(),
            }),
        )
        .await?;
    match args.output {
        Output::Table => println!(
            "promotion of {} authorized; it becomes an anchor within seconds (see `nexus anchor list`)",
            anchor.node_id
        ),
        output => print_structured(output, &anchor)?,
    }
    Ok(ExitCode::SUCCESS)
}

const MIC_HEADERS: [&str; 6] = ["SERIAL", "NODE", "KIND", "ISSUED", "EXPIRES", "REVOKED"];

fn mic_row(m: &Mic) -> Vec<String> {
    vec![
        m.serial.clone(),
        m.node_id.clone(),
        m.kind.clone(),
        m.issued_at.clone(),
        m.expires_at.clone(),
        match (&m.revoked_at, &m.revoke_reason) {
            (Some(at), Some(reason)) => format!("{at} ({reason})"),
            (Some(at), None) => at.clone(),
            _ => "-".into(),
        },
    ]
}

/// `nexus mics list [--node ID]`.
pub async fn mics_list(args: &ClientArgs, node: Option<String>) -> anyhow::Result<ExitCode> {
    if let Some(node) = &node {
        nexus_ca::NodeId::from_str(node)?;
    }
    let api = Api::new(args)?;
    let mics: Vec<Mic> = all_pages(
        &api,
        &with_query("/v1/mics", &[("node_id", node.as_deref())]),
    )
    .await?;
    match args.output {
        Output::Table => print_table(&MIC_HEADERS, mics.iter().map(mic_row).collect()),
        output => print_structured(output, &mics)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus mics get SERIAL`.
pub async fn mics_get(args: &ClientArgs, serial: &str) -> anyhow::Result<ExitCode> {
    let serial = nexus_ca::normalize_serial(&serial.replace(':', ""))?;
    let api = Api::new(args)?;
    let mic: Mic = api.get(&format!("/v1/mics/{serial}")).await?;
    match args.output {
        Output::Table => print_table(&MIC_HEADERS, vec![mic_row(&mic)]),
        output => print_structured(output, &mic)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus mics revoke SERIAL [--reason R]`.
pub async fn mics_revoke(
    args: &ClientArgs,
    serial: &str,
    reason: &str,
) -> anyhow::Result<ExitCode> {
    let serial = nexus_ca::normalize_serial(&serial.replace(':', ""))?;
    reason.parse::<nexus_ca::RevokeReason>()?;
    let api = Api::new(args)?;
    let revoked: Revoked = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/mics/{serial}/revoke"),
            Some(&RevokeRequest {
                reason: Some(reason.to_string()),
            }),
        )
        .await?;
    match args.output {
        Output::Table => println!(
            "certificate {} of node {} revoked ({}); CRL number {}",
            revoked.mic.serial,
            revoked.mic.node_id,
            revoked
                .mic
                .revoke_reason
                .as_deref()
                .unwrap_or("unspecified"),
            revoked.crl_number
        ),
        output => print_structured(output, &revoked)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus mics crl`: the PEM revocation lists, for `openssl crl` or `openssl verify -CRLfile`.
pub async fn crl(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new_public(args)?;
    let reply = api
        .request(reqwest::Method::GET, "/v1/crl?format=pem", None::<&()>)
        .await?;
    print!("{}", String::from_utf8_lossy(&reply.body));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_files_are_yaml_or_json_by_content() {
        let yaml = "# comment\nid: r1\nmatch:\n  message_types: [7]\n";
        assert_eq!(
            parse_objects("f", yaml).unwrap(),
            vec![serde_json::json!({"id": "r1", "match": {"message_types": [7]}})]
        );
        let docs = parse_objects("f", "id: a\n---\nid: b\n").unwrap();
        assert_eq!(docs.len(), 2);
        let list = parse_objects("f", "- id: a\n- id: b\n").unwrap();
        assert_eq!(list, docs);
        let json = parse_objects("f", " [{\"id\": \"a\"}, {\"id\": \"b\"}]").unwrap();
        assert_eq!(json, docs);
        let err = format!("{:#}", parse_objects("in.json", "{\"id\": }").unwrap_err());
        assert!(err.contains("in.json") && err.contains("line 1"), "{err}");
        let err = format!(
            "{:#}",
            parse_objects("in.yaml", "id: a\nmatch: [x\n").unwrap_err()
        );
        assert!(err.contains("in.yaml") && err.contains("line"), "{err}");
        let err = format!("{:#}", parse_objects("e", "\n# nothing\n").unwrap_err());
        assert!(err.contains("holds no object"), "{err}");
        let err = format!("{:#}", parse_objects("e", "- 1\n").unwrap_err());
        assert!(err.contains("item 1 is a number"), "{err}");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            with_query(
                "/v1/audit",
                &[
                    ("action", Some("GET /v1/routes/{id}")),
                    ("since", Some("2026-01-01T00:00:00+01:00")),
                    ("tenant", None),
                ]
            ),
            "/v1/audit?action=GET%20%2Fv1%2Froutes%2F%7Bid%7D&since=2026-01-01T00%3A00%3A00%2B01%3A00"
        );
        assert_eq!(
            with_query("/v1/x?a=1", &[("b", Some("2"))]),
            "/v1/x?a=1&b=2"
        );
    }

    #[test]
    fn cells_render_for_humans() {
        let v = serde_json::json!({"q": {"a": 1, "b": null}, "l": ["x", 2], "t": 0, "s": ""});
        assert_eq!(cell(&v, "/q", Cell::Pairs), "a=1");
        assert_eq!(cell(&v, "/l", Cell::Plain), "x,2");
        assert_eq!(cell(&v, "/t", Cell::Millis), "-");
        assert_eq!(cell(&v, "/s", Cell::Plain), "-");
        assert_eq!(cell(&v, "/missing", Cell::Plain), "-");
    }
}
