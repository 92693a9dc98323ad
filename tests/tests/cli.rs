//! The command line: bad input gets a message and an exit code, never a panic.

use std::net::TcpListener;

use nexus_tests::{ANY_PORTS, run};

fn expect_failure(args: &[&str], expect: &str) -> i32 {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in: {stderr}"
    );
    out.status.code().unwrap_or(-1)
}

#[test]
fn bad_flags_are_usage_errors() {
    assert_eq!(
        expect_failure(&["run", "--colour", "red"], "unexpected argument"),
        2
    );
    assert_eq!(expect_failure(&["init"], "--data-dir"), 2);
    assert_eq!(
        expect_failure(&["token", "create", "--ttl", "soon"], "whole number"),
        2
    );
    assert_eq!(
        expect_failure(
            &["join", "tok", "--data-dir", "x", "--label", "novalue"],
            "KEY=VALUE"
        ),
        2
    );
}

#[test]
fn unusable_data_dirs_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    assert_eq!(
        expect_failure(
            &["run", "--data-dir", missing.to_str().unwrap()],
            "does not exist"
        ),
        1
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    expect_failure(
        &["run", "--data-dir", empty.to_str().unwrap()],
        "does not hold an enrolled node",
    );
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    expect_failure(
        &["init", "--data-dir", file.to_str().unwrap()],
        "cannot create",
    );

    // init refuses to overwrite a fleet.
    let fleet = tmp.path().join("fleet");
    let mut args = vec!["init", "--data-dir", fleet.to_str().unwrap()];
    args.extend(ANY_PORTS);
    assert!(run(&args).status.success());
    expect_failure(&args, "already holds a Nexus node");

    // A corrupt database is reported, not panicked on.
    std::fs::write(fleet.join("nexus.db"), b"this is not sqlite").unwrap();
    expect_failure(&["run", "--data-dir", fleet.to_str().unwrap()], "nexus.db");
}

#[test]
fn occupied_ports_and_bad_addresses_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("anchor");
    let dir_s = dir.to_str().unwrap();
    let mut args = vec!["init", "--data-dir", dir_s];
    args.extend(ANY_PORTS);
    assert!(run(&args).status.success());

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    expect_failure(
        &["run", "--data-dir", dir_s, "--api", &taken_addr],
        "already uses it",
    );
    expect_failure(
        &["run", "--data-dir", dir_s, "--api", "nowhere"],
        "not IP:PORT",
    );
    let out = nexus_tests::nexus()
        .args(["run", "--data-dir", dir_s])
        .env("NEXUS_GOSSIP_ADDR", "127.0.0.1:99999")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("NEXUS_GOSSIP_ADDR"),
        "env var named: {stderr}"
    );
}

#[test]
fn client_commands_explain_missing_keys_and_unreachable_nodes() {
    expect_failure(&["nodes", "--api", "http://127.0.0.1:9"], "no API key");
    expect_failure(
        &["nodes", "--api", "http://127.0.0.1:9", "--key", "k"],
        "cannot reach",
    );
    expect_failure(
        &["nodes", "--api", "ftp://x", "--key", "k"],
        "must be a URL",
    );
}
