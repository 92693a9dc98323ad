//! CLI commands that talk to a node's API: tokens and nodes.

use std::collections::BTreeMap;
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

use crate::cli::{ClientArgs, Output};

/// Checks a label; the message says what is wrong.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let ok_key = !key.is_empty()
        && key.len() <= 63
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !ok_key {
        return Err(format!(
            "label key {key:?} must be 1-63 characters of letters, digits, '-', '_', '.', '/'"
        ));
    }
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err(format!(
            "label value for {key:?} must be at most 255 characters without control characters"
        ));
    }
    Ok(())
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

fn read_pem_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

impl Api {
    /// For public routes (no API key needed).
    fn new_public(args: &ClientArgs) -> anyhow::Result<Api> {
        let mut args = args.clone();
        if args.key.is_none() && args.key_file.is_none() && args.client_cert.is_none() {
            args.key = Some(String::new());
        }
        Api::new(&args)
    }

    fn new(args: &ClientArgs) -> anyhow::Result<Api> {
        let key = match (&args.key, &args.key_file) {
            (Some(key), _) => Some(key.trim().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the API key file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) if args.client_cert.is_some() => None,
            (None, None) => bail!(
                "no API key: pass --key KEY, --key-file FILE or set NEXUS_API_KEY (the first admin key is in <data-dir>/admin.key of the fleet's first anchor), or authenticate with a node certificate (--client-cert/--client-key)"
            ),
        };
        let base = args.api_url.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!(
                "--api {:?} must be a URL like https://127.0.0.1:7600",
                args.api_url
            );
        }
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if base.starts_with("https://") {
            let Some(ca_file) = &args.ca_file else {
                bail!(
                    "--api {base} uses HTTPS: pass --ca-file <data-dir>/trust/root.pem (the fleet root certificate, on every node) or set NEXUS_CA_FILE"
                );
            };
            let root = nexus_ca::pem_to_der(&read_pem_file(ca_file, "the fleet root certificate")?)
                .with_context(|| format!("{} is not a PEM certificate", ca_file.display()))?
                .swap_remove(0);
            let client = match (&args.client_cert, &args.client_key) {
                (Some(cert), Some(key_file)) => {
                    let chain =
                        nexus_ca::pem_to_der(&read_pem_file(cert, "the client certificate")?)
                            .with_context(|| {
                                format!("{} is not a PEM certificate", cert.display())
                            })?;
                    let key = nexus_ca::NodeKey::from_pkcs8_pem(&read_pem_file(
                        key_file,
                        "the client key",
                    )?)
                    .with_context(|| {
                        format!("{} is not an ed25519 PKCS#8 key", key_file.display())
                    })?;
                    Some(
                        nexus_ca::Credentials::new(chain, &key)
                            .context("--client-cert and --client-key do not belong together")?,
                    )
                }
                _ => None,
            };
            builder = builder.use_preconfigured_tls(nexus_ca::api_client_config(root, client));
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Api { http, base, key })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the node API at {}: is the node running?",
                self.base
            )
        })?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the API response")?;
        if !status.is_success() {
            if let Ok(error) = serde_json::from_slice::<ErrorBody>(&bytes) {
                bail!(
                    "{} ({}): {}",
                    error.error.code,
                    status.as_u16(),
                    error.error.message
                );
            }
            bail!(
                "the API answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {url}"))
    }
}

fn print_structured<T: Serialize>(output: Output, value: &T) -> anyhow::Result<()> {
    match output {
        Output::Json | Output::Table => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_norway::to_string(value)?),
    }
    Ok(())
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
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

async fn all_pages<T: DeserializeOwned>(api: &Api, path: &str) -> anyhow::Result<Vec<T>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    // Bounded: 1,000 pages of up to 1,000 items.
    for _ in 0..1000 {
        let url = match &cursor {
            Some(c) => format!("{path}?limit=1000&cursor={c}"),
            None => format!("{path}?limit=1000"),
        };
        let page: Page<T> = api.call(reqwest::Method::GET, &url, None::<&()>).await?;
        items.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(items),
        }
    }
    bail!("{path} returned more than a million items")
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
    let api = Api::new(args)?;
    let mut path = "/v1/mics?limit=1000".to_string();
    if let Some(node) = &node {
        nexus_ca::NodeId::from_str(node)?;
        path.push_str(&format!("&node_id={node}"));
    }
    let page: Page<Mic> = api.call(reqwest::Method::GET, &path, None::<&()>).await?;
    match args.output {
        Output::Table => print_table(&MIC_HEADERS, page.items.iter().map(mic_row).collect()),
        output => print_structured(output, &page.items)?,
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
    let url = format!("{}/v1/crl?format=pem", api.base);
    let response = api
        .http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the node API at {}", api.base))?;
    let status = response.status();
    let text = response.text().await.context("reading the CRL")?;
    if !status.is_success() {
        bail!("the API answered {status}: {text}");
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
