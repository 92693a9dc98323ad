//! Join tokens, as operators paste them into `nexus join`: the token text itself, and
//! arbitrary bytes as the payload of a token with a correct checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_ca::JoinToken;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&nexus_fuzz::join_token_around(data));
});

fn check(text: &str) {
    if let Ok(token) = JoinToken::decode(text) {
        // A token that decodes re-encodes to one that decodes to the same token.
        let again = JoinToken::decode(&token.encode()).expect("re-encoded token decodes");
        assert_eq!(again, token);
    }
}
