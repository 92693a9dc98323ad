//! Certificate revocation lists, as nodes receive them from anchors and gossip:
//! `verify_crl` against a fixed fleet's trust store, and installing into a `RevocationSet`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_ca::{Installed, RevocationSet};

fuzz_target!(|data: &[u8]| {
    let (trust, _) = nexus_fuzz::trust();
    let verified = nexus_ca::verify_crl(trust, data);
    let set = RevocationSet::new();
    let installed = set.install(trust, data);
    match (&verified, &installed) {
        (Ok(crl), Ok(first)) => {
            assert_eq!(
                *first,
                Installed::New {
                    number: crl.number,
                    issuer: crl.issuer_fingerprint
                }
            );
            for serial in &crl.serials {
                assert!(
                    set.is_revoked(serial),
                    "serial {serial} listed but not revoked"
                );
            }
            // The same list again changes nothing.
            let again = set
                .install(trust, data)
                .expect("a list that installed once");
            assert_eq!(again, Installed::Stale { held: crl.number });
            assert_eq!(set.version(), 1);
        }
        (Err(_), Err(_)) => assert!(set.is_empty() && set.version() == 0),
        _ => panic!("verify_crl {verified:?} but install {installed:?}"),
    }
});
