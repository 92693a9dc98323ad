//! Machine identity certificates, as peers present them in TLS and gossip: `read_mic` on any
//! DER, chain verification against a fixed fleet's trust store, and the PEM reader.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (trust, now) = nexus_fuzz::trust();
    let read = nexus_ca::read_mic(data);
    if let Ok(verified) = trust.verify_mic(data, *now) {
        // Verification is parsing plus the chain: it cannot accept what `read_mic` refuses.
        assert_eq!(
            read.as_ref().ok(),
            Some(&verified),
            "verify_mic and read_mic disagree"
        );
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(certs) = nexus_ca::pem_to_der(text)
    {
        assert!(
            !certs.is_empty(),
            "pem_to_der returned no certificate without an error"
        );
        for der in certs {
            let _ = nexus_ca::read_mic(&der);
        }
    }
});
