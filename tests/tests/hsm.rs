//! CA keys outside plain files: an anchor whose root and intermediate keys live in a PKCS#11
//! token (SoftHSM2), and one whose key files are passphrase-encrypted. Both admit a node whose
//! MIC `openssl verify` accepts.
//!
//! SoftHSM2 missing is a failure, never a skip: `scripts/test` installs it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nexus_tests::{ANY_PORTS, Fleet};

/// Where Debian and Ubuntu put the SoftHSM2 module.
const MODULES: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

/// A user PIN distinctive enough to grep for.
const PIN: &str = "pin-e2e-4711";

fn softhsm_module() -> PathBuf {
    if let Some(path) = std::env::var_os("NEXUS_TEST_PKCS11_MODULE") {
        return PathBuf::from(path);
    }
    MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "SoftHSM2 is not installed (no module at {}): run scripts/test, which installs \
                 it (apt-get install softhsm2), or set NEXUS_TEST_PKCS11_MODULE",
                MODULES.join(", ")
            )
        })
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}): run scripts/test"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{cmd:?} panicked: {stderr}");
    (out.status.success(), stdout, stderr)
}

/// Creates a join token with `nexus token create` against the anchor.
fn create_token(fleet: &Fleet) -> String {
    let (ok, stdout, stderr) = output(nexus_tests::nexus().args([
        "token",
        "create",
        "--api",
        &fleet.anchor().api,
        "--ca-file",
        fleet.anchor().dir.join("trust/root.pem").to_str().unwrap(),
        "--key",
        &fleet.admin_key,
    ]));
    assert!(ok, "nexus token create failed: {stderr}");
    stdout.trim().to_string()
}

/// Joins a node and checks its MIC chains to the anchor's root with openssl.
async fn join_and_verify(fleet: &mut Fleet) {
    let token = create_token(fleet);
    let node_dir = fleet.join(&token, &[]).await.unwrap().dir.clone();
    let anchor_dir = fleet.anchor().dir.clone();
    let (ok, stdout, stderr) = output(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(anchor_dir.join("trust/root.pem"))
            .arg("-untrusted")
            .arg(anchor_dir.join("ca/intermediate.pem"))
            .arg(node_dir.join("node.pem")),
    );
    assert!(
        ok && stdout.contains(": OK"),
        "openssl verify: {stdout}{stderr}"
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn anchor_with_ca_keys_in_softhsm_admits_nodes_and_writes_no_key_files() {
    let module = softhsm_module();
    let hsm = tempfile::Builder::new()
        .prefix("nexus-hsm-")
        .tempdir()
        .unwrap();
    let tokens = hsm.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = hsm.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    // Every nexus process of this test binary uses this token directory.
    nexus_tests::set_nexus_env("SOFTHSM2_CONF", &conf);
    let (ok, stdout, stderr) = output(
        Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                "nexus-e2e",
                "--pin",
                PIN,
                "--so-pin",
                "so-pin-e2e",
            ]),
    );
    assert!(ok, "softhsm2-util --init-token: {stdout}{stderr}");
    let pin_file = hsm.path().join("user.pin");
    write_private(&pin_file, &format!("{PIN}\n"));
    let module_s = module.to_str().unwrap();
    let pin_s = pin_file.to_str().unwrap();

    // A wrong token label is refused before anything is written, naming the tokens there are.
    let refused = hsm.path().join("refused");
    let refused_s = refused.to_str().unwrap();
    let mut args = vec!["init", "--data-dir", refused_s];
    args.extend(ANY_PORTS);
    args.extend([
        "--hsm-module",
        module_s,
        "--hsm-token",
        "no-such-token",
        "--hsm-pin-file",
        pin_s,
    ]);
    let (ok, _, stderr) = output(nexus_tests::nexus().args(&args));
    assert!(!ok, "init with an unknown token must fail");
    assert!(
        stderr.contains("no-such-token") && stderr.contains("\"nexus-e2e\""),
        "{stderr}"
    );
    assert!(!refused.join("node.key").exists());

    let mut fleet = Fleet::init_with(&[
        "--hsm-module",
        module_s,
        "--hsm-token",
        "nexus-e2e",
        "--hsm-pin-file",
        pin_s,
    ])
    .await
    .unwrap();
    let anchor_dir = fleet.anchor().dir.clone();

    // No key material under ca/: certificates and keys.toml only.
    let ca_files = files_under(&anchor_dir.join("ca"));
    for file in &ca_files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            !text.contains("PRIVATE KEY") && file.extension().is_none_or(|e| e != "key"),
            "{} holds a key",
            file.display()
        );
    }
    let keys = std::fs::read_to_string(anchor_dir.join("ca/keys.toml")).unwrap();
    assert!(keys.contains("backend = \"pkcs11\""), "{keys}");
    assert!(keys.contains("token = \"nexus-e2e\""), "{keys}");
    assert!(keys.contains(&format!("pin_file = \"{pin_s}\"")), "{keys}");
    assert!(
        keys.contains(&format!(
            "root_key_label = \"nexus-root-{}\"",
            fleet.anchor().fleet_id
        )),
        "{keys}"
    );
    assert!(
        keys.contains(&format!(
            "intermediate_key_label = \"nexus-anchor-{}\"",
            fleet.anchor().node_id
        )),
        "{keys}"
    );
    assert!(
        !keys.contains(PIN),
        "keys.toml must not hold the PIN: {keys}"
    );
    for file in files_under(&anchor_dir) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(PIN.len()).any(|w| w == PIN.as_bytes()),
            "{} holds the PIN",
            file.display()
        );
    }

    // `nexus run` signed with the token: a joined node's MIC verifies against the root.
    join_and_verify(&mut fleet).await;
}

#[tokio::test]
async fn anchor_with_encrypted_key_files_needs_its_passphrase() {
    let secrets = tempfile::Builder::new()
        .prefix("nexus-pass-")
        .tempdir()
        .unwrap();
    let pass_file = secrets.path().join("ca.pass");
    write_private(&pass_file, "a long CA passphrase\n");
    let pass_s = pass_file.to_str().unwrap();
    let mut fleet = Fleet::init_with(&["--key-passphrase-file", pass_s])
        .await
        .unwrap();
    let anchor_dir = fleet.anchor().dir.clone();
    for key in ["ca/root.key", "ca/intermediate.key"] {
        let text = std::fs::read_to_string(anchor_dir.join(key)).unwrap();
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{key}: {text}"
        );
    }
    let keys = std::fs::read_to_string(anchor_dir.join("ca/keys.toml")).unwrap();
    assert!(keys.contains("backend = \"file\""), "{keys}");
    assert!(
        keys.contains(&format!("passphrase_file = \"{pass_s}\"")),
        "{keys}"
    );
    assert!(!keys.contains("a long CA passphrase"), "{keys}");
    join_and_verify(&mut fleet).await;

    // Without the passphrase file the anchor refuses to start, and says what to do.
    fleet.nodes[0].terminate();
    let moved = secrets.path().join("elsewhere.pass");
    std::fs::rename(&pass_file, &moved).unwrap();
    let (ok, _, stderr) =
        output(nexus_tests::nexus().args(["run", "--data-dir", anchor_dir.to_str().unwrap()]));
    assert!(!ok, "run without the passphrase must fail");
    assert!(stderr.contains(pass_s), "{stderr}");
    // NEXUS_KEY_PASSPHRASE_FILE overrides the path in keys.toml. (Set for this process only:
    // the other test's `init --hsm-module` would refuse it.)
    let mut child = nexus_tests::nexus()
        .args(["run", "--data-dir", anchor_dir.to_str().unwrap()])
        .env("NEXUS_KEY_PASSPHRASE_FILE", &moved)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = u64::from(child.id());
    let serving = nexus_tests::wait_until(Duration::from_secs(20), "the anchor to serve", || {
        let endpoints = std::fs::read_to_string(anchor_dir.join("endpoints.json"));
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        async move {
            exited
                || endpoints
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|e| e["pid"].as_u64() == Some(pid))
        }
    })
    .await;
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        serving.is_ok() && exited.is_none(),
        "run with NEXUS_KEY_PASSPHRASE_FILE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
