//! The PKCS#11 key backend against a real token: SoftHSM2 with a token in a temp dir.
//!
//! One test on purpose: a PKCS#11 module is initialized once per process and reads
//! `SOFTHSM2_CONF` only then, so every check here shares the token created first.
//! SoftHSM2 missing is a failure, never a skip: `scripts/test` installs it.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use nexus_ca::{
    CaError, CaSigner, CertificateAuthority, MicProfile, NodeKey, Pkcs11Key, Pkcs11Token, Role,
    der_to_pem,
};

/// Where Debian and Ubuntu put the module (the first is a symlink on most releases).
const MODULES: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

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

fn run(cmd: &mut Command) -> String {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {cmd:?} ({e}): run scripts/test, which installs it"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn profile(fleet: &str, key: &NodeKey, role: Role) -> MicProfile {
    MicProfile {
        fleet_id: fleet.to_string(),
        node_id: key.node_id(),
        tenant: String::new(),
        site: "lab".to_string(),
        role,
        validity: Duration::from_secs(3600),
    }
}

#[test]
fn softhsm_keys_sign_a_chain_openssl_accepts_and_never_leave_the_token() {
    let module = softhsm_module();
    let dir = tempfile::Builder::new()
        .prefix("nexus-pkcs11-")
        .tempdir()
        .unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    #[allow(unsafe_code)]
    // SAFETY: the only test in this binary sets it before loading the module or starting a
    // thread, and nothing else in the process reads or writes the environment meanwhile.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", &conf);
    }
    run(Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "nexus-test",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ]));
    let pin_file = dir.path().join("pin");
    write_private(&pin_file, "1234\n");
    let token = Pkcs11Token {
        module: module.clone(),
        label: "nexus-test".into(),
        pin_file: pin_file.clone(),
    };

    // Before anything logs in (login state is per process and token, so a later wrong PIN
    // would be answered "already logged in"): the errors an operator may meet.
    let wrong_token = Pkcs11Token {
        label: "nope".into(),
        ..token.clone()
    };
    let err = Pkcs11Key::open(&wrong_token, "k").unwrap_err();
    assert!(matches!(err, CaError::HsmTokenNotFound { .. }), "{err}");
    assert!(err.to_string().contains("\"nexus-test\""), "{err}");
    let bad_pin = dir.path().join("bad-pin");
    write_private(&bad_pin, "9999\n");
    let err = Pkcs11Key::open(
        &Pkcs11Token {
            pin_file: bad_pin.clone(),
            ..token.clone()
        },
        "k",
    )
    .unwrap_err();
    assert!(matches!(err, CaError::HsmLogin { .. }), "{err}");
    assert!(err.to_string().contains("PIN"), "{err}");
    assert!(
        err.to_string().contains(&bad_pin.display().to_string()),
        "{err}"
    );
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Pkcs11Key::open(&token, "k").unwrap_err();
    assert!(matches!(err, CaError::SecretFileMode { .. }), "{err}");
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = Pkcs11Key::open(&token, "nexus-root-acme").unwrap_err();
    assert!(matches!(err, CaError::HsmKeyNotFound { .. }), "{err}");

    // Keys generated in the token sign a root, an intermediate and a MIC.
    let anchor = NodeKey::generate();
    let root_label = "nexus-root-acme";
    let anchor_label = format!("nexus-anchor-{}", anchor.node_id());
    let root_key = Pkcs11Key::generate(&token, root_label).unwrap();
    let err = Pkcs11Key::generate(&token, root_label).unwrap_err();
    assert!(matches!(err, CaError::HsmKeyExists { .. }), "{err}");
    let anchor_key = Pkcs11Key::generate(&token, &anchor_label).unwrap();
    assert_ne!(root_key.public_key(), anchor_key.public_key());
    assert!(root_key.describe().contains(root_label));

    let root = CertificateAuthority::new_fleet_root_with("acme", Arc::new(root_key)).unwrap();
    assert!(root.key_pem().is_none(), "a token key has no PEM");
    let intermediate = root
        .new_intermediate_with("acme", anchor.node_id(), Arc::new(anchor_key))
        .unwrap();
    let node = NodeKey::generate();
    let mic = intermediate
        .issue_mic(&node.public_key(), &profile("acme", &node, Role::Node))
        .unwrap();

    // A second process-wide handle on the same key (as `nexus run` opens it) works alongside.
    let reopened = Pkcs11Key::open(&token, &anchor_label).unwrap();
    let reloaded = CertificateAuthority::load_with(&intermediate.cert_pem(), Arc::new(reopened))
        .expect("the token's key matches the intermediate certificate");
    let anchor_mic = reloaded
        .issue_mic(
            &anchor.public_key(),
            &profile("acme", &anchor, Role::Anchor),
        )
        .unwrap();
    // The root's key is not the intermediate's.
    let err = CertificateAuthority::load_with(
        &root.cert_pem(),
        Arc::new(Pkcs11Key::open(&token, &anchor_label).unwrap()),
    )
    .unwrap_err();
    assert_eq!(err, CaError::KeyMismatch);

    let root_pem = dir.path().join("root.pem");
    let int_pem = dir.path().join("int.pem");
    std::fs::write(&root_pem, root.cert_pem()).unwrap();
    std::fs::write(&int_pem, intermediate.cert_pem()).unwrap();
    for (name, der) in [("node.pem", &mic), ("anchor.pem", &anchor_mic)] {
        let path = dir.path().join(name);
        std::fs::write(&path, der_to_pem(der)).unwrap();
        let out = run(Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root_pem)
            .arg("-untrusted")
            .arg(&int_pem)
            .arg(&path));
        assert!(out.contains(": OK"), "{out}");
    }

    // The private keys cannot be read out of the token.
    let ctx = Pkcs11::new(&module).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "nexus-test")
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from("1234"))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("C_Login: {e}"),
    }
    for label in [root_label, anchor_label.as_str()] {
        let handles = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .unwrap();
        assert_eq!(handles.len(), 1, "{label}");
        let attrs = session
            .get_attributes(
                handles[0],
                &[
                    AttributeType::Value,
                    AttributeType::Extractable,
                    AttributeType::Sensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Token,
                ],
            )
            .unwrap();
        // cryptoki drops attributes the token refuses (CKR_ATTRIBUTE_SENSITIVE).
        assert!(
            !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
            "{label}: CKA_VALUE was readable: {attrs:?}"
        );
        for want in [
            Attribute::Extractable(false),
            Attribute::Sensitive(true),
            Attribute::NeverExtractable(true),
            Attribute::Token(true),
        ] {
            assert!(
                attrs
                    .iter()
                    .any(|a| format!("{a:?}") == format!("{want:?}")),
                "{label}: expected {want:?} in {attrs:?}"
            );
        }
    }
}
