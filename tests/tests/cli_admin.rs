//! The `nexus` admin CLI against real nodes: route policies from YAML and JSON files in every
//! output format, tenants, firmware, fleet settings, snapshots; where the API URL and the key
//! come from (flag over environment over profile) and the profile file's own errors; shell
//! completions; errors that say what to do; API keys, the audit log and the watch stream.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nexus_tests::{Fleet, NodeProc, wait_until};
use serde_json::Value;

/// Runs the CLI against one node, isolated from the caller's own profile file and variables.
struct Cli {
    api: String,
    ca: PathBuf,
    key_file: PathBuf,
    /// The profile file these commands see (`NEXUS_CLI_CONFIG`).
    config: PathBuf,
}

impl Cli {
    fn new(fleet: &Fleet) -> Cli {
        let dir = &fleet.anchor().dir;
        Cli {
            api: fleet.anchor().api.clone(),
            ca: dir.join("trust").join("root.pem"),
            key_file: dir.join("admin.key"),
            config: fleet.root.path().join("cli").join("config.toml"),
        }
    }

    /// `nexus` with no API settings at all, only the isolated profile file.
    fn bare(&self) -> Command {
        let mut cmd = nexus_tests::nexus();
        cmd.env("NEXUS_CLI_CONFIG", &self.config)
            .env_remove("NEXUS_API")
            .env_remove("NEXUS_PROFILE")
            .env_remove("NEXUS_API_KEY_FILE")
            .env_remove("NEXUS_CA_FILE")
            .env_remove("NEXUS_CLIENT_CERT")
            .env_remove("NEXUS_CLIENT_KEY")
            .stdin(Stdio::null());
        cmd
    }

    /// `nexus ARGS --api .. --ca-file .. --key-file ..` (the admin key).
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare();
        cmd.args(args)
            .args(["--api", &self.api])
            .arg("--ca-file")
            .arg(&self.ca)
            .arg("--key-file")
            .arg(&self.key_file);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(self.cmd(args).output().unwrap(), args)
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    fn fail(&self, args: &[&str], expect: &[&str]) -> String {
        fail(self.cmd(args).output().unwrap(), args, expect)
    }

    /// Runs with `input` on standard input.
    fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        ok(child.wait_with_output().unwrap(), args)
    }
}

fn ok(out: Output, what: impl std::fmt::Debug) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what:?} failed ({}): {stderr}",
        out.status
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fail(out: Output, what: impl std::fmt::Debug, expect: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what:?} must fail with exit code 1: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what:?} panicked: {stderr}");
    for want in expect {
        assert!(
            stderr.contains(want),
            "{what:?}: expected {want:?} in: {stderr}"
        );
    }
    stderr
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

const ROUTE_YAML: &str = "\
# A route policy, as an operator writes it.
id: r-cli
name: allow RO from the CLI
priority: 10
match:
  stream_modes: [RO]
  message_types: [7]
action:
  type: allow
enabled: true
";

#[tokio::test]
async fn routes_tenants_and_config_through_the_cli() {
    let fleet = Fleet::init().await.unwrap();
    let cli = Cli::new(&fleet);
    let files = fleet.root.path();

    // --- route policies: create from YAML, list in every format, replace from stdin JSON ----
    let route = write(files, "route.yaml", ROUTE_YAML);
    let route_s = route.to_str().unwrap();
    let out = cli.ok(&["routes", "create", "-f", route_s]);
    assert!(out.contains("route policy r-cli created"), "{out}");
    let list = cli.json(&["routes", "list", "-o", "json"]);
    assert_eq!(ids(&list), ["r-cli"]);
    assert_eq!(list[0]["priority"], 10);
    assert_eq!(list[0]["match"]["stream_modes"][0], "RO");
    let yaml = cli.ok(&["routes", "list", "-o", "yaml"]);
    assert!(
        yaml.contains("- id: r-cli") || yaml.contains("id: r-cli"),
        "{yaml}"
    );
    assert!(yaml.contains("priority: 10"), "{yaml}");
    let table = cli.ok(&["routes"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("PRIORITY") && header.contains("ACTION"),
        "{table}"
    );
    let row = lines.next().unwrap_or_else(|| panic!("no row: {table}"));
    assert!(
        row.starts_with("r-cli") && row.contains("allow") && row.contains("10"),
        "{table}"
    );
    let one = cli.json(&["routes", "get", "r-cli", "-o", "json"]);
    assert_eq!(one["name"], "allow RO from the CLI");

    // Creating it again is a conflict, with the server's advice.
    cli.fail(
        &["routes", "create", "-f", route_s],
        &["already_exists (409)", "PUT"],
    );
    // apply replaces; JSON on standard input.
    let as_json = serde_json::json!({
        "id": "r-cli",
        "name": "allow RO from the CLI",
        "priority": 3,
        "match": {"stream_modes": ["RO"], "message_types": [7]},
        "action": {"type": "allow"},
        "enabled": true
    });
    let out = cli.ok_stdin(&["routes", "apply", "-f", "-"], &as_json.to_string());
    assert!(out.contains("route policy r-cli replaced"), "{out}");
    assert_eq!(
        cli.json(&["routes", "get", "r-cli", "-o", "json"])["priority"],
        3
    );
    // The server's 422 names the field.
    let bad = write(
        files,
        "bad-route.yaml",
        &ROUTE_YAML
            .replace("id: r-cli", "id: r-bad")
            .replace("type: allow", "type: ratelimit"),
    );
    cli.fail(
        &["routes", "create", "-f", bad.to_str().unwrap()],
        &["(422)", "rate_limit"],
    );
    // A file that is not YAML names itself and the line.
    let broken = write(files, "broken.yaml", "id: r-x\nmatch: [unclosed\n");
    cli.fail(
        &["routes", "create", "-f", broken.to_str().unwrap()],
        &["broken.yaml", "line"],
    );
    let scalar = write(files, "scalar.yaml", "just a string\n");
    cli.fail(
        &["routes", "create", "-f", scalar.to_str().unwrap()],
        &["scalar.yaml", "not an object"],
    );

    // Site routes are their own collection.
    let site_route = write(
        files,
        "site-route.yaml",
        &ROUTE_YAML.replace("id: r-cli", "id: s-cli"),
    );
    cli.ok(&[
        "routes",
        "create",
        "--site",
        "edge-1",
        "-f",
        site_route.to_str().unwrap(),
    ]);
    assert_eq!(
        ids(&cli.json(&["routes", "list", "--site", "edge-1", "-o", "json"])),
        ["s-cli"]
    );
    assert_eq!(ids(&cli.json(&["routes", "-o", "json"])), ["r-cli"]);
    cli.ok(&["routes", "delete", "s-cli", "--site", "edge-1"]);

    let out = cli.ok(&["routes", "delete", "r-cli"]);
    assert!(out.contains("route policy r-cli deleted"), "{out}");
    assert_eq!(
        cli.json(&["routes", "list", "-o", "json"]),
        Value::Array(vec![])
    );
    cli.fail(&["routes", "get", "r-cli"], &["not_found (404)", "r-cli"]);

    // --- tenants --------------------------------------------------------------------------
    let tenant = write(
        files,
        "acme.yaml",
        "name: Acme Corp\nquotas:\n  max_nodes: 5\n",
    );
    let out = cli.ok(&["tenants", "create", "acme", "-f", tenant.to_str().unwrap()]);
    assert!(out.contains("tenant acme created"), "{out}");
    cli.ok(&["tenants", "create", "beta"]);
    let tenants = cli.json(&["tenants", "list", "-o", "json"]);
    assert_eq!(ids(&tenants), ["acme", "beta", "default"]);
    assert_eq!(tenants[0]["quotas"]["max_nodes"], 5);
    assert_eq!(tenants[1]["name"], "beta", "the name defaults to the id");
    let table = cli.ok(&["tenants"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("acme") && l.contains("Acme Corp") && l.contains("max_nodes=5")),
        "{table}"
    );
    let patch = write(files, "patch.yaml", "quotas:\n  max_connections: 100\n");
    cli.ok(&["tenants", "update", "acme", "-f", patch.to_str().unwrap()]);
    let acme = cli.ok(&["tenants", "get", "acme", "-o", "yaml"]);
    assert!(
        acme.contains("max_nodes: 5") && acme.contains("max_connections: 100"),
        "a merge patch keeps the other quotas: {acme}"
    );
    let zero = write(files, "zero.yaml", "quotas:\n  max_nodes: 0\n");
    cli.fail(
        &["tenants", "update", "acme", "-f", zero.to_str().unwrap()],
        &["(422)", "max_nodes"],
    );
    cli.ok(&["tenants", "delete", "beta"]);
    assert_eq!(
        ids(&cli.json(&["tenants", "-o", "json"])),
        ["acme", "default"]
    );

    // --- firmware, fleet policies and settings, snapshots, status, whoami ----------------
    let firmware = write(
        files,
        "fw.json",
        &serde_json::json!({
            "id": "fw-1", "version": "4.2.0", "image_sha256": "a".repeat(64),
            "selector": {"rack": "r1"}, "batch_size": 10, "max_unavailable_percent": 10,
            "health_timeout_s": 120
        })
        .to_string(),
    );
    cli.ok(&["firmware", "create", "-f", firmware.to_str().unwrap()]);
    let table = cli.ok(&["firmware", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("fw-1") && l.contains("rack=r1")),
        "{table}"
    );
    cli.ok(&["firmware", "delete", "fw-1"]);
    assert_eq!(cli.json(&["firmware", "-o", "json"]), Value::Array(vec![]));

    let policy = write(
        files,
        "policy.yaml",
        &ROUTE_YAML.replace("id: r-cli", "id: fp-1"),
    );
    cli.ok(&[
        "fleet",
        "policies",
        "create",
        "-f",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(
        ids(&cli.json(&["fleet", "policies", "list", "-o", "json"])),
        ["fp-1"]
    );
    cli.ok(&["fleet", "policies", "delete", "fp-1"]);
    let settings = write(files, "settings.yaml", "push_fanout: 4\n");
    cli.ok(&["fleet", "settings", "set", "-f", settings.to_str().unwrap()]);
    let table = cli.ok(&["fleet", "settings"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("push_fanout") && l.ends_with('4')),
        "{table}"
    );
    assert_eq!(
        cli.json(&["fleet", "settings", "get", "-o", "json"])["push_fanout"],
        4
    );

    let snapshot = cli.json(&[
        "config",
        "snapshots",
        "create",
        "before the window",
        "-o",
        "json",
    ]);
    let snapshot_id = snapshot["id"].as_str().unwrap().to_string();
    let list = cli.json(&["config", "snapshots", "list", "-o", "json"]);
    assert!(ids(&list).contains(&snapshot_id), "{list}");
    let out = cli.ok(&["config", "snapshots", "rollback", &snapshot_id]);
    assert!(out.contains(&snapshot_id), "{out}");
    let status = cli.ok(&["config", "status"]);
    assert!(
        status.starts_with("DOCUMENT") && status.contains("fleet"),
        "{status}"
    );

    let me = cli.json(&["whoami", "-o", "json"]);
    assert_eq!(me["role"], "fleet-admin", "{me}");
    let table = cli.ok(&["whoami"]);
    assert!(
        table.contains("--key-file"),
        "where the key came from: {table}"
    );
}

#[tokio::test]
async fn settings_come_from_flags_then_environment_then_profile() {
    let fleet = Fleet::init().await.unwrap();
    let cli = Cli::new(&fleet);
    let dir = fleet.root.path();
    let nowhere = format!("http://127.0.0.1:{}", closed_port());
    let wrong_key = write(dir, "wrong.key", "nxk_not-a-key\n");

    // Without a profile file and without flags, the CLI says what to pass.
    let out = cli.bare().args(["nodes"]).output().unwrap();
    fail(out, "no settings", &["no API key", "--key", "profile"]);

    // `profile set` writes the file; the first profile becomes current.
    let out = cli
        .bare()
        .args(["profile", "set", "good", "--api", &cli.api])
        .arg("--key-file")
        .arg(&cli.key_file)
        .arg("--ca")
        .arg(&cli.ca)
        .output()
        .unwrap();
    assert!(ok(out, "profile set").contains("(current)"));
    let out = cli
        .bare()
        .args(["profile", "set", "down", "--api", &nowhere])
        .arg("--key-file")
        .arg(&wrong_key)
        .output()
        .unwrap();
    ok(out, "profile set down");
    // Comments the user wrote survive edits.
    let text = std::fs::read_to_string(&cli.config).unwrap();
    std::fs::write(&cli.config, format!("# my profiles\n{text}")).unwrap();
    let list = ok(
        cli.bare().args(["profile", "list"]).output().unwrap(),
        "profile list",
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with('*') && l.contains("good") && l.contains(&cli.api)),
        "{list}"
    );
    assert!(!list.contains("nxk_"), "keys are not printed: {list}");
    let listed: Value = serde_json::from_str(&ok(
        cli.bare()
            .args(["profile", "list", "-o", "json"])
            .output()
            .unwrap(),
        "profile list -o json",
    ))
    .unwrap();
    assert_eq!(listed[1]["name"], "good");
    assert_eq!(listed[1]["current"], true);

    // The current profile alone is enough.
    let whoami = |cmd: &mut Command| ok(cmd.output().unwrap(), "whoami");
    let out = whoami(cli.bare().args(["whoami"]));
    assert!(
        out.contains("fleet-admin") && out.contains("profile \"good\""),
        "{out}"
    );

    // Environment beats the profile: NEXUS_API points nowhere, and the error says so.
    let out = cli
        .bare()
        .args(["whoami"])
        .env("NEXUS_API", &nowhere)
        .output()
        .unwrap();
    fail(
        out,
        "env api",
        &["cannot reach", &nowhere, "NEXUS_API", "--api"],
    );
    // A flag beats the environment.
    let out = whoami(
        cli.bare()
            .args(["whoami", "--api", &cli.api])
            .env("NEXUS_API", &nowhere),
    );
    assert!(out.contains("(from --api)"), "{out}");

    // Keys: NEXUS_API_KEY beats the profile's key file; --key beats NEXUS_API_KEY.
    let out = cli
        .bare()
        .args(["whoami"])
        .env("NEXUS_API_KEY", "nxk_wrong")
        .output()
        .unwrap();
    fail(
        out,
        "env key",
        &[
            "the API key (from $NEXUS_API_KEY) was refused",
            "--key",
            "profile \"good\"",
        ],
    );
    let admin_key = std::fs::read_to_string(&cli.key_file).unwrap();
    let out = whoami(
        cli.bare()
            .args(["whoami", "--key", admin_key.trim()])
            .env("NEXUS_API_KEY", "nxk_wrong"),
    );
    assert!(out.contains("key from --key"), "{out}");
    let out = cli
        .bare()
        .args(["whoami", "--key", "nxk_wrong"])
        .output()
        .unwrap();
    fail(out, "flag key", &["the API key (from --key) was refused"]);

    // NEXUS_PROFILE picks another profile; --profile beats it; `profile use` switches.
    let out = cli
        .bare()
        .args(["whoami"])
        .env("NEXUS_PROFILE", "down")
        .output()
        .unwrap();
    fail(
        out,
        "env profile",
        &["cannot reach", &nowhere, "profile \"down\""],
    );
    whoami(
        cli.bare()
            .args(["whoami", "--profile", "good"])
            .env("NEXUS_PROFILE", "down"),
    );
    let out = cli
        .bare()
        .args(["whoami", "--profile", "nope"])
        .output()
        .unwrap();
    fail(
        out,
        "unknown profile",
        &["no profile \"nope\"", "down, good"],
    );
    ok(
        cli.bare()
            .args(["profile", "use", "down"])
            .output()
            .unwrap(),
        "profile use",
    );
    let out = cli.bare().args(["whoami"]).output().unwrap();
    fail(out, "used profile", &["cannot reach", &nowhere]);
    let text = std::fs::read_to_string(&cli.config).unwrap();
    assert!(text.starts_with("# my profiles"), "{text}");
    assert!(text.contains("current = \"down\""), "{text}");

    // A malformed file is an error naming the file and the line, whatever the command.
    std::fs::write(
        &cli.config,
        "current = \"good\"\n[profiles.good]\napi = \"https://127.0.0.1:1\"\nkee_file = \"typo\"\n",
    )
    .unwrap();
    let config = cli.config.display().to_string();
    let out = cli.bare().args(["whoami"]).output().unwrap();
    fail(out, "typo", &[&config, "line 4", "kee_file"]);
    std::fs::write(&cli.config, "current = \"good\n").unwrap();
    let out = cli.cmd(&["whoami"]).output().unwrap();
    fail(out, "broken", &[&config, "line 1"]);
    let out = cli
        .bare()
        .args(["profile", "set", "x", "--api", &cli.api])
        .output()
        .unwrap();
    fail(out, "set on a broken file", &[&config, "line 1"]);
    // A profile asked for when the file does not exist.
    std::fs::remove_file(&cli.config).unwrap();
    let out = cli
        .bare()
        .args(["whoami", "--profile", "good"])
        .output()
        .unwrap();
    fail(
        out,
        "missing file",
        &[&config, "does not exist", "profile set"],
    );
}

#[tokio::test]
async fn completions_and_errors_that_say_what_to_do() {
    let fleet = Fleet::init().await.unwrap();
    let cli = Cli::new(&fleet);

    let bash = ok(
        cli.bare().args(["completions", "bash"]).output().unwrap(),
        "completions bash",
    );
    for sub in [
        "routes", "tenants", "firmware", "fleet", "mics", "keys", "audit", "watch", "config",
        "whoami", "profile",
    ] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(bash.contains("complete") && bash.contains("nexus"));
    for shell in ["zsh", "fish"] {
        let out = ok(
            cli.bare().args(["completions", shell]).output().unwrap(),
            shell,
        );
        assert!(out.contains("routes"), "{shell}: {out}");
    }

    // Unreachable: which address, where it came from, how to set it.
    let nowhere = format!("http://127.0.0.1:{}", closed_port());
    let out = cli
        .bare()
        .args(["routes", "--api", &nowhere, "--key", "k"])
        .output()
        .unwrap();
    fail(
        out,
        "unreachable",
        &[
            "cannot reach the node API at",
            &nowhere,
            "(from --api)",
            "NEXUS_API",
        ],
    );
    // A refused key: which one, and what to check.
    let out = cli
        .bare()
        .args(["routes", "list", "--api", &cli.api, "--key", "nxk_nope"])
        .arg("--ca-file")
        .arg(&cli.ca)
        .output()
        .unwrap();
    fail(
        out,
        "bad key",
        &[
            "the API key (from --key) was refused",
            "NEXUS_API_KEY",
            "profile",
        ],
    );
    // HTTPS without the fleet root.
    let out = cli
        .bare()
        .args(["routes", "--api", &cli.api, "--key", "k"])
        .output()
        .unwrap();
    fail(out, "no ca", &["--ca-file", "NEXUS_CA_FILE"]);
    // The wrong root: another fleet's.
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().join("other");
    let mut init = vec!["init", "--data-dir", other_dir.to_str().unwrap()];
    init.extend(nexus_tests::ANY_PORTS);
    ok(nexus_tests::run(&init), "init another fleet");
    let out = cli
        .bare()
        .args(["routes", "--api", &cli.api, "--key", "k", "--ca-file"])
        .arg(other_dir.join("trust").join("root.pem"))
        .output()
        .unwrap();
    fail(
        out,
        "wrong ca",
        &["cannot reach", "certificate", "root.pem"],
    );
    // A missing input file, and a missing key file.
    cli.fail(
        &["routes", "create", "-f", "/nonexistent/route.yaml"],
        &["/nonexistent/route.yaml"],
    );
    let out = cli
        .bare()
        .args([
            "routes",
            "--api",
            &cli.api,
            "--key-file",
            "/nonexistent/admin.key",
        ])
        .output()
        .unwrap();
    fail(out, "key file", &["/nonexistent/admin.key", "--key-file"]);
    // Usage errors are exit code 2.
    let out = cli.bare().args(["routes", "create"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cli
        .bare()
        .args(["keys", "create", "--name", "x", "--role", "root"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cli
        .bare()
        .args(["audit", "--since", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}

// --- API keys, audit, watch ----------------------------------------------------------------

#[tokio::test]
async fn api_keys_and_the_audit_log() {
    let fleet = Fleet::init().await.unwrap();
    let cli = Cli::new(&fleet);

    let created = cli.json(&[
        "keys", "create", "--name", "ci", "--role", "viewer", "--tenant", "default", "--ttl",
        "30d", "-o", "json",
    ]);
    let secret = created["secret"].as_str().unwrap().to_string();
    let key_id = created["key"]["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("nxk_"), "{created}");
    assert!(created["key"]["expires_at"].is_string(), "{created}");
    // Table mode prints only the secret on stdout, for `> file`.
    let out = cli
        .cmd(&[
            "keys", "create", "--name", "ops", "--role", "operator", "--tenant", "default",
        ])
        .output()
        .unwrap();
    let printed = ok(out, "keys create");
    assert!(
        printed.trim().starts_with("nxk_") && printed.trim().lines().count() == 1,
        "{printed}"
    );

    let viewer = |args: &[&str]| {
        let mut cmd = cli.bare();
        cmd.args(args)
            .args(["--api", &cli.api, "--key", &secret])
            .arg("--ca-file")
            .arg(&cli.ca);
        cmd.output().unwrap()
    };
    let me: Value = serde_json::from_str(&ok(viewer(&["whoami", "-o", "json"]), "whoami")).unwrap();
    assert_eq!(me["role"], "viewer");
    assert_eq!(me["tenant"], "default");
    assert_eq!(me["identity"], format!("api-key:{key_id}"));
    // A viewer may read, not write; the error names the role needed.
    ok(viewer(&["routes", "list"]), "viewer reads");
    let route = write(fleet.root.path(), "route.yaml", ROUTE_YAML);
    fail(
        viewer(&["routes", "create", "-f", route.to_str().unwrap()]),
        "viewer writes",
        &["forbidden (403)", "operator", "whoami"],
    );

    let keys = cli.json(&["keys", "list", "-o", "json"]);
    assert!(ids(&keys).contains(&key_id), "{keys}");
    let table = cli.ok(&["keys"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&key_id) && l.contains("viewer")),
        "{table}"
    );
    assert!(!table.contains(&secret), "secrets are never listed");
    let revoked = cli.json(&["keys", "revoke", &key_id, "-o", "json"]);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    wait_until(
        Duration::from_secs(5),
        "the revoked key stops working",
        || async { !viewer(&["whoami"]).status.success() },
    )
    .await
    .unwrap();
    fail(
        viewer(&["whoami"]),
        "revoked key",
        &["was refused", "--key"],
    );

    // --- audit: filters, newest first, pagination followed up to --limit -------------------
    let http = nexus_tests::api_client(&fleet.anchor().dir).unwrap();
    for _ in 0..130 {
        let status = http
            .get(format!("{}/v1/whoami", cli.api))
            .bearer_auth(&fleet.admin_key)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success());
    }
    let entries = cli.json(&[
        "audit",
        "--action",
        "GET /v1/whoami",
        "--limit",
        "120",
        "-o",
        "json",
    ]);
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 120, "more than one page, cut at --limit");
    let mut seen: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 120, "no entry twice across pages");
    if let Some(pair) = entries
        .windows(2)
        .find(|w| sortable(&w[0]["time"]) < sortable(&w[1]["time"]))
    {
        panic!("newest first: {} before {}", pair[0], pair[1]);
    }
    assert!(entries.iter().all(|e| e["action"] == "GET /v1/whoami"));

    let mine = cli.json(&[
        "audit",
        "--identity",
        &format!("api-key:{key_id}"),
        "-o",
        "json",
    ]);
    let mine = mine.as_array().unwrap();
    assert!(
        mine.iter()
            .any(|e| e["result"] == "denied" && e["status"] == 403),
        "the viewer's refused write is audited: {mine:?}"
    );
    let denied = cli.json(&["audit", "--result", "denied", "--since", "1h", "-o", "json"]);
    assert!(
        !denied.as_array().unwrap().is_empty()
            && denied
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["result"] == "denied"),
        "{denied}"
    );
    let none = cli.json(&["audit", "--until", "2000-01-01T00:00:00Z", "-o", "json"]);
    assert_eq!(none, Value::Array(vec![]));
    let table = cli.ok(&["audit", "--limit", "3"]);
    assert_eq!(
        table.lines().count(),
        4,
        "a header and three entries: {table}"
    );
    assert!(table.starts_with("TIME"), "{table}");
}

/// An RFC 3339 UTC time ("…:43.92Z") with its fraction padded to nine digits, so that
/// comparing the strings compares the times.
fn sortable(time: &Value) -> String {
    let time = time
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {time}"));
    let body = time
        .strip_suffix('Z')
        .unwrap_or_else(|| panic!("not UTC: {time}"));
    let (seconds, fraction) = body.split_once('.').unwrap_or((body, ""));
    format!("{seconds}.{fraction:0<9}")
}

/// Reads a child's output lines on a thread.
fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

struct Watcher {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(mut cmd: Command) -> Watcher {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Watcher {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the line on stderr saying the stream is open.
    fn connected(&self) {
        let line = self
            .stderr
            .recv_timeout(Duration::from_secs(10))
            .expect("the watcher connects");
        assert!(line.starts_with("watching"), "{line}");
    }

    fn line(&self, what: &str) -> String {
        self.stdout
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no line for {what}"))
    }

    /// Lines until one contains `want`.
    fn until(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self.line(want);
            let done = line.contains(want);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn watch_prints_events_and_resumes_after_the_node_restarts() {
    // The node must come back on the same port, so it gets a fixed one.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("anchor");
    let dir_s = dir.to_str().unwrap();
    let port = closed_port();
    let api_addr = format!("127.0.0.1:{port}");
    ok(
        nexus_tests::run(&[
            "init",
            "--data-dir",
            dir_s,
            "--api",
            &api_addr,
            "--gossip",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
        ]),
        "init",
    );
    let mut node = NodeProc::run(&dir).await.unwrap();
    let cli = Cli {
        api: node.api.clone(),
        ca: dir.join("trust").join("root.pem"),
        key_file: dir.join("admin.key"),
        config: root.path().join("cli.toml"),
    };
    let files = root.path();
    let route = |id: &str| {
        write(
            files,
            &format!("{id}.yaml"),
            &ROUTE_YAML.replace("id: r-cli", &format!("id: {id}")),
        )
    };

    // JSON lines: one object per event.
    let json =
        Watcher::start(cli.cmd(&["watch", "--kinds", "routes", "-o", "json", "--count", "2"]));
    json.connected();
    cli.ok(&["routes", "create", "-f", route("w1").to_str().unwrap()]);
    cli.ok(&["routes", "delete", "w1"]);
    let first: Value = serde_json::from_str(&json.line("upsert")).unwrap();
    let second: Value = serde_json::from_str(&json.line("delete")).unwrap();
    assert_eq!(first["event"], "routes", "{first}");
    assert_eq!(first["data"]["op"], "upsert", "{first}");
    assert_eq!(first["data"]["id"], "w1", "{first}");
    assert_eq!(second["data"]["op"], "delete", "{second}");
    let first_id = first["event_id"].as_str().unwrap().to_string();
    // --count ends it.
    let mut json = json;
    assert!(json.child.wait().unwrap().success());

    // Resuming after the first event brings the second again, in table form.
    let resumed = Watcher::start(cli.cmd(&[
        "watch",
        "--kinds",
        "routes",
        "--last-event-id",
        &first_id,
        "--count",
        "1",
    ]));
    let line = resumed.line("resumed delete");
    assert!(
        line.contains("routes") && line.contains("delete") && line.contains("w1"),
        "{line}"
    );
    assert!(
        line.starts_with(second["event_id"].as_str().unwrap()),
        "{line}"
    );

    // A watcher outlives a node restart: it reconnects with Last-Event-ID, is told to resync
    // (the new run does not hold the old run's events), and goes on printing.
    let table = Watcher::start(cli.cmd(&["watch", "--kinds", "routes"]));
    table.connected();
    cli.ok(&["routes", "create", "-f", route("w2").to_str().unwrap()]);
    table.until("w2");
    node.kill9();
    let mut node = NodeProc::run(&dir).await.unwrap();
    assert_eq!(node.api, cli.api, "same port");
    // The watcher reconnects on its own; a write after that reaches it.
    let mut told = Vec::new();
    wait_until(Duration::from_secs(20), "the watcher reconnects", || {
        told.extend(table.stderr.try_iter());
        let back = told.iter().any(|l| l.contains("reconnected"));
        async move { back }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {told:?}"));
    cli.ok(&["routes", "create", "-f", route("w3").to_str().unwrap()]);
    let seen = table.until("w3");
    assert!(
        seen.iter().any(|l| l.contains("resync")),
        "the gap is announced: {seen:?}"
    );
    node.terminate();
}
