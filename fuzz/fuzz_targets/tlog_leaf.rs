//! Transparency-log leaves, as auditors read them from an anchor's log: every leaf that
//! decodes must re-encode to exactly its own bytes (the leaf hash depends on it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_ca::tlog::LogEntry;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = LogEntry::from_leaf_bytes(data) {
        let bytes = entry.leaf_bytes().expect("a decoded leaf re-encodes");
        assert_eq!(bytes, data, "leaf does not round-trip");
    }
});
