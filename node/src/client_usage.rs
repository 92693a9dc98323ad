//! `nexus tenants usage ID`: a tenant's usage as an anchor rolled it up
//! (`GET /v1/tenants/{id}/usage`), as a table, JSON, YAML, or the billing CSV the anchor
//! writes (`-o csv`).

use std::process::ExitCode;

use serde_json::Value;

use crate::cli::{ClientArgs, Output};
use crate::client::{Api, Cell, Column, cell, encode, print_structured, print_table, with_query};

const PERIOD_COLUMNS: &[Column] = &[
    ("PERIOD", "/period_start", Cell::Plain),
    ("BYTES", "/bytes", Cell::Plain),
    ("CONNECTIONS", "/connections", Cell::Plain),
    ("API CALLS", "/api_calls", Cell::Plain),
    ("NODE HOURS", "/node_hours", Cell::Plain),
    ("NODES", "/nodes", Cell::Plain),
];

/// Node-hours with two decimals, for the table.
fn hours(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_string(), |h| format!("{h:.2}"))
}

/// `nexus tenants usage ID [--from T] [--to T] [--granularity hour|day]`.
pub async fn tenant_usage(
    args: &ClientArgs,
    id: &str,
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
) -> anyhow::Result<ExitCode> {
    let csv = args.output == Output::Csv;
    // The client itself refuses `-o csv` for every other command.
    let mut plain = args.clone();
    plain.output = Output::Json;
    let api = Api::new(&plain)?;
    let path = with_query(
        &format!("/v1/tenants/{}/usage", encode(id)),
        &[
            ("from", from.as_deref()),
            ("to", to.as_deref()),
            ("granularity", granularity.as_deref()),
            ("format", csv.then_some("csv")),
        ],
    );
    if csv {
        let reply = api
            .request(reqwest::Method::GET, &path, None::<&()>)
            .await?;
        print!("{}", String::from_utf8_lossy(&reply.body));
        return Ok(ExitCode::SUCCESS);
    }
    let report: Value = api.get(&path).await?;
    match args.output {
        Output::Table => {
            let periods = report["periods"].as_array().cloned().unwrap_or_default();
            let mut rows: Vec<Vec<String>> = periods
                .iter()
                .map(|p| {
                    PERIOD_COLUMNS
                        .iter()
                        .map(|(_, pointer, how)| match *pointer {
                            "/node_hours" => hours(&p["node_hours"]),
                            _ => cell(p, pointer, *how),
                        })
                        .collect()
                })
                .collect();
            let total = &report["total"];
            rows.push(vec![
                "TOTAL".to_string(),
                cell(total, "/bytes", Cell::Plain),
                cell(total, "/connections", Cell::Plain),
                cell(total, "/api_calls", Cell::Plain),
                hours(&total["node_hours"]),
                cell(total, "/nodes", Cell::Plain),
            ]);
            println!(
                "tenant {} from {} to {} by {}",
                cell(&report, "/tenant", Cell::Plain),
                cell(&report, "/from", Cell::Plain),
                cell(&report, "/to", Cell::Plain),
                cell(&report, "/granularity", Cell::Plain)
            );
            print_table(
                &PERIOD_COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>(),
                rows,
            );
        }
        output => print_structured(output, &report)?,
    }
    Ok(ExitCode::SUCCESS)
}
