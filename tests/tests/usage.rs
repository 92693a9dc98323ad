//! Usage metering against real processes: an anchor, two nodes of tenant acme and one of
//! globex, reporting every second. The anchor's roll-up shows acme's API calls and node-seconds
//! and nothing of globex's node; globex's caller cannot read acme's usage; a node killed with
//! `kill -9` continues its counters; an anchor that was down while the nodes kept counting
//! catches up to exactly what the nodes hold, never more; the CSV parses with its header.

use std::path::Path;
use std::time::Duration;

use nexus_tests::{Fleet, NodeProc, wait_until};
use serde_json::{Value, json};

/// acme's counters as a node holds them in its own SQLite file: (API calls, node-seconds).
fn local_rows(dir: &Path, tenant: &str) -> (u64, u64) {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("nexus.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(
        "SELECT COALESCE(SUM(api_calls), 0), COALESCE(SUM(node_seconds), 0)
         FROM usage_local WHERE tenant = ?1",
        [tenant],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .unwrap()
}

struct Caller {
    http: reqwest::Client,
    key: String,
}

impl Caller {
    async fn get(&self, url: &str) -> (u16, String) {
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("the API answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    async fn json(&self, url: &str) -> (u16, Value) {
        let (status, text) = self.get(url).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// `n` calls of `GET /v1/nodes` on `api`; how many were billed (answered past
/// authentication, permission and rate limit).
async fn calls(caller: &Caller, api: &str, n: usize) -> u64 {
    let mut billed = 0;
    for _ in 0..n {
        let (status, _) = caller.get(&format!("{api}/v1/nodes")).await;
        if !matches!(status, 401 | 403 | 429) {
            billed += 1;
        }
    }
    billed
}

/// Calls `api` until acme's key works there (its configuration replicated); the calls billed.
async fn until_billed(caller: &Caller, api: &str) -> u64 {
    for _ in 0..400 {
        let billed = calls(caller, api, 1).await;
        if billed > 0 {
            return billed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the key never worked on {api}");
}

async fn create_key(fleet: &Fleet, role: &str, tenant: &str) -> String {
    let (status, body) = fleet
        .post_json(
            &fleet.anchor().api,
            "/v1/keys",
            &json!({"name": format!("{tenant} {role}"), "role": role, "tenant": tenant}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_metered_reported_and_rolled_up_without_double_counting() {
    nexus_tests::set_nexus_env("NEXUS_USAGE_REPORT_INTERVAL", "1s");
    let mut fleet = Fleet::init().await.unwrap();
    let anchor_api = fleet.anchor().api.clone();
    for tenant in ["acme", "globex"] {
        let (status, body) = fleet
            .post_json(
                &anchor_api,
                "/v1/tenants",
                &json!({"id": tenant, "name": tenant}),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let acme_token = fleet
        .token(json!({"tenant": "acme", "uses": 2}))
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join(&acme_token, &[]).await.unwrap();
    fleet.join(&acme_token, &[]).await.unwrap();
    let globex_token = fleet.token(json!({"tenant": "globex"})).await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    fleet.join(&globex_token, &[]).await.unwrap();
    fleet.converge(4, "online", &[]).await.unwrap();

    let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
    let acme = Caller {
        http: http.clone(),
        key: create_key(&fleet, "viewer", "acme").await,
    };
    let globex = Caller {
        http: http.clone(),
        key: create_key(&fleet, "admin", "globex").await,
    };
    let admin = Caller {
        http: http.clone(),
        key: fleet.admin_key.clone(),
    };
    let (n1, n2) = (fleet.nodes[1].api.clone(), fleet.nodes[2].api.clone());
    let usage_url = format!("{anchor_api}/v1/tenants/acme/usage");

    // acme's key reaches its nodes with acme's configuration; every call answered counts.
    let mut on_node = [0u64; 2];
    for (i, api) in [&n1, &n2].into_iter().enumerate() {
        on_node[i] = until_billed(&acme, api).await;
    }
    on_node[0] += calls(&acme, &n1, 7).await;
    on_node[1] += calls(&acme, &n2, 5).await;
    let mut expected = on_node[0] + on_node[1];
    // A fleet admin's calls bill no tenant unless they name one.
    assert_eq!(calls(&admin, &n1, 3).await, 3);

    let total = |report: &Value, field: &str| report["total"][field].as_u64().unwrap_or(0);
    let mut report = Value::Null;
    for _ in 0..400 {
        let (status, body) = admin.json(&usage_url).await;
        report = body;
        if status == 200 && total(&report, "api_calls") == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total(&report, "api_calls"), expected, "{report}");
    assert!(total(&report, "node_seconds") > 0, "{report}");
    assert_eq!(
        total(&report, "nodes"),
        2,
        "acme's two nodes, not globex's: {report}"
    );
    assert_eq!(report["granularity"], "hour");
    // The last 24 hours, widened to whole hours.
    let periods = report["periods"].as_array().unwrap().len();
    assert!((24..=25).contains(&periods), "{report}");

    // Tenant isolation: globex's caller does not see acme's usage; acme's caller sees its own
    // (on an anchor: another node answers 421).
    let (status, body) = globex.json(&usage_url).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = globex
        .json(&format!("{anchor_api}/v1/tenants/globex/usage"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(total(&body, "nodes"), 1, "globex's own node: {body}");
    let (status, body) = acme.json(&usage_url).await;
    assert_eq!(status, 200, "{body}");
    expected += 1; // that read, answered by the anchor for an acme caller
    let (status, body) = acme.json(&format!("{n1}/v1/tenants/acme/usage")).await;
    assert_eq!(status, 421, "{body}");
    expected += 1; // answered (421) by acme's node 1
    on_node[0] += 1;
    let (status, body) = admin.json(&format!("{usage_url}?from=yesterday")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("from"),
        "{body}"
    );

    // CSV for billing: the header, one line per period, the same sums as the JSON.
    let (status, csv) = admin.get(&format!("{usage_url}?format=csv")).await;
    assert_eq!(status, 200, "{csv}");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("tenant,period_start,period_end,bytes,connections,api_calls,node_hours,nodes")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), periods);
    assert!(rows.iter().all(|r| r.len() == 8 && r[0] == "acme"), "{csv}");
    let csv_calls: u64 = rows.iter().map(|r| r[5].parse::<u64>().unwrap()).sum();
    assert!(csv_calls >= expected - 2, "{csv}");
    let accept = admin
        .http
        .get(&usage_url)
        .bearer_auth(&admin.key)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(
        accept.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );

    // The CLI asks for the same CSV.
    let anchor_dir = fleet.anchor().dir.clone();
    let ca = anchor_dir.join("trust").join("root.pem");
    let cli = nexus_tests::run(&[
        "tenants",
        "usage",
        "acme",
        "-o",
        "csv",
        "--api",
        &anchor_api,
        "--ca-file",
        ca.to_str().unwrap(),
        "--key",
        &fleet.admin_key,
    ]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(out.starts_with("tenant,period_start,period_end,"), "{out}");
    let cli = nexus_tests::run(&[
        "nodes",
        "list",
        "-o",
        "csv",
        "--api",
        &anchor_api,
        "--ca-file",
        ca.to_str().unwrap(),
        "--key",
        &fleet.admin_key,
    ]);
    assert!(!cli.status.success());
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("tenants usage"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );

    // Converged: the anchor holds exactly what acme's nodes hold (plus the anchor's own
    // count of acme's calls it answered), and never more.
    let acme_dirs = [fleet.nodes[1].dir.clone(), fleet.nodes[2].dir.clone()];
    let holds_what_nodes_hold = |usage_url: String, expected: u64| {
        let (acme_dirs, admin, anchor_dir) = (&acme_dirs, &admin, &anchor_dir);
        async move {
            let before: Vec<(u64, u64)> = acme_dirs.iter().map(|d| local_rows(d, "acme")).collect();
            let (status, body) = admin.json(&usage_url).await;
            let after: Vec<(u64, u64)> = acme_dirs.iter().map(|d| local_rows(d, "acme")).collect();
            let own = local_rows(anchor_dir, "acme");
            assert_eq!(status, 200, "{body}");
            let (calls, seconds) = (total(&body, "api_calls"), total(&body, "node_seconds"));
            let nodes_calls: u64 = after.iter().map(|r| r.0).sum::<u64>() + own.0;
            let low: u64 = before.iter().map(|r| r.1).sum();
            let high: u64 = after.iter().map(|r| r.1).sum();
            // The invariant, on every sample: no anchor holds more than the nodes' disks.
            assert!(calls <= nodes_calls, "{calls} > {nodes_calls}: {body}");
            assert!(seconds <= high, "{seconds} > {high} node-seconds: {body}");
            calls == expected && nodes_calls == expected && seconds + 6 >= low
        }
    };
    wait_until(Duration::from_secs(20), "the roll-up matches", || {
        holds_what_nodes_hold(usage_url.clone(), expected)
    })
    .await
    .unwrap();

    // kill -9 and restart a node: its counters continue from disk (at most the last save
    // interval is lost), and nothing is counted twice.
    tokio::time::sleep(Duration::from_millis(1500)).await; // past one save
    let before_kill = local_rows(&acme_dirs[0], "acme");
    assert_eq!(before_kill.0, on_node[0], "every call was saved");
    fleet.nodes[1].kill9();
    let restarted = NodeProc::run(&acme_dirs[0]).await.unwrap();
    let n1 = restarted.api.clone();
    fleet.nodes[1] = restarted;
    let mut billed = until_billed(&acme, &n1).await;
    billed += calls(&acme, &n1, 4).await;
    expected += billed;
    wait_until(
        Duration::from_secs(20),
        "the restarted node's calls arrive",
        || holds_what_nodes_hold(usage_url.clone(), expected),
    )
    .await
    .unwrap();
    let after_restart = local_rows(&acme_dirs[0], "acme");
    assert_eq!(
        after_restart.0,
        before_kill.0 + billed,
        "continued, not reset"
    );
    assert!(after_restart.1 >= before_kill.1, "node-seconds continued");

    // The anchor goes away while the nodes keep counting and retrying, then comes back: the
    // roll-up catches up to exactly the nodes' rows; re-sent rows count once.
    assert!(fleet.nodes[0].terminate(), "the anchor stops cleanly");
    expected += calls(&acme, &n1, 6).await + calls(&acme, &n2, 3).await;
    let node_api = n2.clone();
    wait_until(
        Duration::from_secs(20),
        "reports fail while the anchor is down",
        || {
            let (fleet, node_api) = (&fleet, node_api.clone());
            async move {
                fleet
                    .metric(&node_api, "nexus_usage_reports_total", "outcome=\"failed\"")
                    .await
                    .is_ok_and(|n| n > 0.0)
            }
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.nodes[0] = NodeProc::run(&anchor_dir).await.unwrap();
    // Its ports were picked at `init` (port 0): the API may answer elsewhere now.
    let anchor_api = fleet.anchor().api.clone();
    let usage_url = format!("{anchor_api}/v1/tenants/acme/usage");
    wait_until(Duration::from_secs(30), "the anchor catches up", || {
        holds_what_nodes_hold(usage_url.clone(), expected)
    })
    .await
    .unwrap();
    let accepted = fleet
        .metric(&n2, "nexus_usage_reports_total", "outcome=\"accepted\"")
        .await
        .unwrap();
    assert!(accepted > 0.0);

    // Lost acknowledgements: node 2 forgets what the anchor acknowledged and sends all its
    // rows again. The totals do not move.
    let db = rusqlite::Connection::open(acme_dirs[1].join("nexus.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    assert!(db.execute("DELETE FROM usage_acks", []).unwrap() > 0);
    drop(db);
    wait_until(
        Duration::from_secs(20),
        "node 2 reports everything again",
        || {
            let (fleet, n2) = (&fleet, n2.clone());
            async move {
                fleet
                    .metric(&n2, "nexus_usage_reports_total", "outcome=\"accepted\"")
                    .await
                    .is_ok_and(|n| n >= accepted + 2.0)
            }
        },
    )
    .await
    .unwrap();
    assert!(holds_what_nodes_hold(usage_url.clone(), expected).await);
    let rows = fleet
        .metric(&anchor_api, "nexus_usage_rows", "")
        .await
        .unwrap();
    assert!(
        rows >= 3.0,
        "acme's two nodes and globex's at least: {rows}"
    );
}
