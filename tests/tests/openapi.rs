//! The OpenAPI document against a live node: the anchor of a real fleet serves
//! `GET /v1/openapi.json` (the committed `api/openapi.json`, without credentials), and
//! Schemathesis drives every operation in it with generated valid and invalid requests under
//! its default checks (no 5xx, every answer's status, content type, headers and body as the
//! document says, invalid input refused, valid input accepted, authentication not ignored).
//!
//! Schemathesis comes from PyPI; `scripts/test` installs it into `target/schemathesis-venv`.
//! `NEXUS_SCHEMATHESIS` names another executable, `NEXUS_SCHEMATHESIS_SEED` another seed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use nexus_tests::Fleet;

/// Pinned in `scripts/test` too.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

const WATCH: &str = "/v1/watch";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

/// The Schemathesis executable, or a failure that says how to install it: a missing tool never
/// skips this test.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("NEXUS_SCHEMATHESIS").map_or_else(
        || workspace().join("target/schemathesis-venv/bin/schemathesis"),
        PathBuf::from,
    );
    let version = Command::new(&path).arg("--version").output();
    match version {
        Ok(out) if out.status.success() => path,
        _ => panic!(
            "Schemathesis is not installed at {}: run scripts/test, or install it with \
             `python3 -m venv target/schemathesis-venv && \
             target/schemathesis-venv/bin/pip install schemathesis=={SCHEMATHESIS_VERSION}` \
             (Debian: apt-get install python3-venv), or set NEXUS_SCHEMATHESIS to its path",
            path.display()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_failure_against_a_live_anchor() -> anyhow::Result<()> {
    let schemathesis = schemathesis();
    // Plain HTTP on loopback: Schemathesis then needs no fleet root to trust.
    nexus_tests::set_nexus_env("NEXUS_HTTP_INSECURE_PLAINTEXT", "true");
    let fleet = Fleet::init().await?;
    let api = fleet.anchor().api.clone();
    assert!(api.starts_with("http://"), "plain-HTTP API expected: {api}");

    // The live document is the committed one, and it needs no credentials.
    let served = reqwest::get(format!("{api}/v1/openapi.json")).await?;
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-type"].to_str()?,
        "application/json"
    );
    let served = served.text().await?;
    let committed = std::fs::read_to_string(workspace().join("api/openapi.json"))?;
    assert!(
        served == committed,
        "the node serves another document than api/openapi.json: regenerate it with \
         `NEXUS_UPDATE_OPENAPI=1 cargo test -p nexus-api openapi`"
    );

    let seed = std::env::var("NEXUS_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let report = fleet.root.path().join("schemathesis-report");
    let config = workspace().join("tests/schemathesis.toml");
    let args = [
        "--config-file".to_string(),
        config.to_str().expect("utf-8 path").into(),
        "run".into(),
        format!("{api}/v1/openapi.json"),
        // An endless event stream: tests/tests/watch.rs tests it.
        "--exclude-path".into(),
        WATCH.into(),
        "--header".into(),
        format!("Authorization: Bearer {}", fleet.admin_key),
        // Bounded per operation; Schemathesis runs Hypothesis without a deadline.
        "--max-examples".into(),
        "20".into(),
        "--seed".into(),
        seed.clone(),
        // One worker: with several, Hypothesis (describing its strategies) fails now and then
        // with an internal error ("AST constructor recursion depth mismatch").
        "--workers".into(),
        "1".into(),
        "--request-timeout".into(),
        "10".into(),
        "--no-color".into(),
        "--report".into(),
        "junit".into(),
        "--report-dir".into(),
        report.to_str().expect("utf-8 path").into(),
    ];
    println!("schemathesis {} (seed {seed})", args[..4].join(" "));
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&schemathesis)
            .args(&args)
            // Hypothesis keeps its example database in the working directory: keep it out of
            // the tree (one per run, so a run does not replay the last one's failures).
            .current_dir(fleet.root.path())
            .env(
                "HYPOTHESIS_STORAGE_DIRECTORY",
                fleet.root.path().join(".hypothesis"),
            )
            .output()
            .map(|out| (out, fleet))
    })
    .await??;
    let (out, fleet) = out;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    println!("schemathesis ran {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found failures (exit {:?}); its output is above, the anchor's log:\n{}",
        out.status.code(),
        fleet.anchor().log()
    );
    // Every documented operation but the stream (and the document itself) was tested: a run
    // that tested nothing, or skipped operations, proves less than it says.
    let document: serde_json::Value = serde_json::from_str(&committed)?;
    let operations = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        // Schemathesis leaves out the operation that serves the document it reads.
        .filter(|(path, _)| ![WATCH, "/v1/openapi.json"].contains(&path.as_str()))
        .flat_map(|(_, item)| item.as_object().expect("path item").keys())
        .filter(|method| ["get", "put", "post", "patch", "delete"].contains(&method.as_str()))
        .count();
    let tested = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<usize>().ok());
    assert_eq!(
        tested,
        Some(operations),
        "schemathesis should have tested all {operations} operations (see its summary above)"
    );
    Ok(())
}
