//! CLI commands for who may do what: API keys, the audit log and `whoami`.

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cli::{ClientArgs, Output};
use crate::client::{
    Api, Cell, Column, all_pages, cell, encode, print_structured, print_table, print_value,
    print_values, with_query,
};

const KEY_COLUMNS: &[Column] = &[
    ("ID", "/id", Cell::Plain),
    ("NAME", "/name", Cell::Plain),
    ("ROLE", "/role", Cell::Plain),
    ("TENANT", "/tenant", Cell::Plain),
    ("CREATED", "/created_at", Cell::Plain),
    ("CREATED BY", "/created_by", Cell::Plain),
    ("EXPIRES", "/expires_at", Cell::Plain),
    ("REVOKED", "/revoked_at", Cell::Plain),
];

const AUDIT_COLUMNS: &[Column] = &[
    ("TIME", "/time", Cell::Plain),
    ("IDENTITY", "/identity", Cell::Plain),
    ("ROLE", "/role", Cell::Plain),
    ("TENANT", "/tenant", Cell::Plain),
    ("ACTION", "/action", Cell::Plain),
    ("TARGET", "/target", Cell::Plain),
    ("STATUS", "/status", Cell::Plain),
    ("RESULT", "/result", Cell::Plain),
];

/// `nexus keys create --name N --role R [--tenant T] [--ttl D]`: prints the secret once.
pub async fn keys_create(
    args: &ClientArgs,
    name: &str,
    role: &str,
    tenant: Option<String>,
    ttl: Option<String>,
) -> anyhow::Result<ExitCode> {
    // Which roles need a tenant (and which tenant a tenant admin's key gets) is the API's
    // rule; its 400 names the field.
    let api = Api::new(args)?;
    let body = json!({"name": name, "role": role, "tenant": tenant, "ttl": ttl});
    let created: Value = api
        .call(reqwest::Method::POST, "/v1/keys", Some(&body))
        .await?;
    match args.output {
        Output::Table => {
            let secret = created["secret"].as_str().unwrap_or_default();
            println!("{secret}");
            let key = &created["key"];
            eprintln!(
                "API key {} ({}, role {}, tenant {}, expires {}): the secret above is shown only now; save it, e.g. in a file for `nexus profile set NAME --key-file FILE`",
                cell(key, "/id", Cell::Plain),
                cell(key, "/name", Cell::Plain),
                cell(key, "/role", Cell::Plain),
                cell(key, "/tenant", Cell::Plain),
                match cell(key, "/expires_at", Cell::Plain).as_str() {
                    "-" => "never".to_string(),
                    at => at.to_string(),
                }
            );
        }
        output => print_structured(output, &created)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `nexus keys list [--tenant T]`.
pub async fn keys_list(args: &ClientArgs, tenant: Option<String>) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let keys: Vec<Value> = all_pages(
        &api,
        &with_query("/v1/keys", &[("tenant", tenant.as_deref())]),
    )
    .await?;
    print_values(args.output, KEY_COLUMNS, &keys)?;
    Ok(ExitCode::SUCCESS)
}

/// `nexus keys get ID`.
pub async fn keys_get(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let key: Value = api.get(&format!("/v1/keys/{}", encode(id))).await?;
    print_value(args.output, KEY_COLUMNS, &key)?;
    Ok(ExitCode::SUCCESS)
}

/// `nexus keys revoke ID`.
pub async fn keys_revoke(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let key: Value = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{}", encode(id)),
            None::<&()>,
        )
        .await?;
    match args.output {
        Output::Table => println!(
            "API key {} ({}) revoked at {}",
            cell(&key, "/id", Cell::Plain),
            cell(&key, "/name", Cell::Plain),
            cell(&key, "/revoked_at", Cell::Plain)
        ),
        output => print_structured(output, &key)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Filters of `nexus audit`.
#[derive(Debug, Default)]
pub struct AuditFilter {
    /// Only this tenant's entries.
    pub tenant: Option<String>,
    /// Only this caller (`api-key:<id>`, `user:<issuer>#<sub>`, `node:<id>`).
    pub identity: Option<String>,
    /// Only this action (`GET /v1/routes/{id}`).
    pub action: Option<String>,
    /// `ok`, `denied` or `error`.
    pub result: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339.
    pub until: Option<String>,
    /// Only entries recorded by this node.
    pub node: Option<String>,
    /// At most this many entries.
    pub limit: usize,
}

/// Entries asked for per page: small pages keep the first lines quick.
const AUDIT_PAGE: usize = 100;

/// `nexus audit`: newest first, following pagination up to `--limit` entries.
pub async fn audit(args: &ClientArgs, filter: AuditFilter) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let mut entries: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    while entries.len() < filter.limit {
        let want = (filter.limit - entries.len()).min(AUDIT_PAGE).to_string();
        let path = with_query(
            "/v1/audit",
            &[
                ("tenant", filter.tenant.as_deref()),
                ("identity", filter.identity.as_deref()),
                ("action", filter.action.as_deref()),
                ("result", filter.result.as_deref()),
                ("since", filter.since.as_deref()),
                ("until", filter.until.as_deref()),
                ("node", filter.node.as_deref()),
                ("limit", Some(&want)),
                ("cursor", cursor.as_deref()),
            ],
        );
        let page: nexus_api::wire::Page<Value> = api.get(&path).await?;
        let got = page.items.len();
        entries.extend(page.items);
        match page.next_cursor {
            Some(next) if got > 0 => cursor = Some(next),
            _ => break,
        }
    }
    entries.truncate(filter.limit);
    print_values(args.output, AUDIT_COLUMNS, &entries)?;
    Ok(ExitCode::SUCCESS)
}

/// Parses `--since`/`--until`: an RFC 3339 time, or a duration meaning that long ago (`15m`,
/// `2h`, `7d`). Returns RFC 3339.
pub fn parse_time(text: &str) -> Result<String, String> {
    use time::format_description::well_known::Rfc3339;
    let help = "write an RFC 3339 time (2026-01-31T12:00:00Z) or a duration ago (30s, 15m, 2h, 7d)";
    if text.starts_with(|c: char| c.is_ascii_digit())
        && let Ok(ago) = nexus_mesh::parse_duration(text)
    {
        let ago = time::Duration::try_from(ago).map_err(|_| format!("{text:?} is too long ago"))?;
        let at = time::OffsetDateTime::now_utc()
            .checked_sub(ago)
            .ok_or_else(|| format!("{text:?} is too long ago"))?;
        return at.format(&Rfc3339).map_err(|e| e.to_string());
    }
    let at = time::OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not a time ({e}): {help}"))?;
    at.format(&Rfc3339).map_err(|e| e.to_string())
}

/// `nexus whoami`: who the API takes this caller for, and where the CLI's settings came from.
pub async fn whoami(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let caller: Value = api.get("/v1/whoami").await?;
    match args.output {
        Output::Table => {
            let settings = api.settings();
            let via = match (&settings.key, &settings.client_cert) {
                (Some(key), _) => format!("key from {}", key.from),
                (None, Some(cert)) => format!("certificate from {}", cert.from),
                (None, None) => "-".into(),
            };
            print_table(
                &["IDENTITY", "ROLE", "TENANT", "API", "CREDENTIAL"],
                vec![vec![
                    cell(&caller, "/identity", Cell::Plain),
                    cell(&caller, "/role", Cell::Plain),
                    cell(&caller, "/tenant", Cell::Plain),
                    format!("{} (from {})", api.base, settings.api.from),
                    via,
                ]],
            );
        }
        output => print_structured(output, &caller)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ago() {
        assert_eq!(
            parse_time("2026-01-31T12:00:00Z").unwrap(),
            "2026-01-31T12:00:00Z"
        );
        let ago = parse_time("1h").unwrap();
        let at = time::OffsetDateTime::parse(&ago, &time::format_description::well_known::Rfc3339)
            .unwrap();
        let delta = time::OffsetDateTime::now_utc() - at;
        assert!(delta > time::Duration::minutes(59) && delta < time::Duration::minutes(61));
        let err = parse_time("yesterday").unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }
}
