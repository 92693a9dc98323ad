//! Opaque pagination cursors. A cursor names the last item of the previous page
//! (`<kind>:<key>`, base64url), so pages stay stable while items are added or removed: a list
//! never repeats an item and never skips one that existed for the whole walk.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes a cursor positioned after `key` in a list of `kind`.
pub fn encode(kind: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{key}"))
}

/// Decodes a cursor for a list of `kind`; the error says what was wrong.
pub fn decode(kind: &str, cursor: &str) -> Result<String, String> {
    let invalid = || {
        format!(
            "cursor {cursor:?} is not valid for this list: pass the next_cursor value of the previous page unchanged, or omit it to start over"
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (found_kind, key) = text.split_once(':').ok_or_else(invalid)?;
    if found_kind != kind || key.is_empty() {
        return Err(invalid());
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejections() {
        let c = encode("nodes", "00ff");
        assert_eq!(decode("nodes", &c).unwrap(), "00ff");
        assert!(
            decode("tokens", &c).is_err(),
            "a cursor of another list is refused"
        );
        assert!(decode("nodes", "!!!").unwrap_err().contains("next_cursor"));
        assert!(decode("nodes", &URL_SAFE_NO_PAD.encode("nodes")).is_err());
        assert!(decode("nodes", &URL_SAFE_NO_PAD.encode("nodes:")).is_err());
    }
}
