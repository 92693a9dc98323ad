//! Certificate signing requests, as an anchor receives them from joining and renewing nodes:
//! the PEM text itself, and arbitrary bytes as the DER inside a PEM block.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&nexus_fuzz::csr_pem_around(data));
});

fn check(pem: &str) {
    let key = nexus_ca::public_key_from_csr(pem);
    let name = nexus_ca::csr_common_name(pem);
    // A request whose signature verifies has parsed, so its subject can be read as well.
    if key.is_ok() {
        assert!(
            name.is_ok(),
            "verified CSR but unreadable subject: {name:?}"
        );
    }
}
