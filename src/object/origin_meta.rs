//! What nearcache keeps with a native-API object in the origin besides the user's
//! metadata, so a read-through restores the object whole: its name (objstore's
//! `X-Meta-Name`) and its consistency level, as `x-amz-meta-nearcache-name` (percent-encoded:
//! S3 metadata is ASCII) and `x-amz-meta-nearcache-level`.
//!
//! S3-API objects are stored exactly as their clients wrote them: nothing is added.

use std::collections::BTreeMap;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use super::key::{CacheKey, Origin};

/// User-metadata names reserved for nearcache on native-API objects.
pub const NAME: &str = "nearcache-name";
pub const LEVEL: &str = "nearcache-level";

/// Bytes encoded in a stored name: controls, non-ASCII (by the encoder), `%` and what
/// header values and S3's metadata handling mangle.
const ENCODED: &AsciiSet = &CONTROLS.add(b'%').add(b'"').add(b'\\').add(b' ');

/// The user metadata to send to the origin for an object of `key`.
pub fn to_origin(
    key: &CacheKey,
    user_meta: &BTreeMap<String, String>,
    name: Option<&str>,
    level: u8,
) -> BTreeMap<String, String> {
    let mut out = user_meta.clone();
    if let Origin::Native(_) = key.origin() {
        if let Some(n) = name {
            out.insert(NAME.into(), utf8_percent_encode(n, ENCODED).to_string());
        }
        out.insert(LEVEL.into(), level.to_string());
    }
    out
}

/// What a read-through restores of a native-API object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    pub name: Option<String>,
    /// The level it was written at (1 when unknown: it is in the origin).
    pub level: u8,
}

/// Takes nearcache's entries out of `user_meta` as read from the origin for `key`.
pub fn from_origin(key: &CacheKey, user_meta: &mut BTreeMap<String, String>) -> Restored {
    let mut r = Restored {
        name: None,
        level: 1,
    };
    if let Origin::Native(_) = key.origin() {
        r.name = user_meta
            .remove(NAME)
            .map(|n| percent_decode_str(&n).decode_utf8_lossy().into_owned());
        // Anything but 2 is restored as 1: the object is in the origin.
        if user_meta.remove(LEVEL).as_deref() == Some("2") {
            r.level = 2;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_objects_round_trip_name_and_level() {
        let key = CacheKey::native("01J0000000000000000000000A");
        let mut user = BTreeMap::new();
        user.insert("owner".to_string(), "ann".to_string());
        let name = "rapport été 100%.pdf";
        let mut sent = to_origin(&key, &user, Some(name), 2);
        assert!(sent.values().all(|v| v.is_ascii() && !v.contains(' ')));
        let r = from_origin(&key, &mut sent);
        assert_eq!(r.name.as_deref(), Some(name));
        assert_eq!(r.level, 2);
        assert_eq!(sent, user);
    }

    #[test]
    fn s3_objects_are_left_as_written() {
        let key = CacheKey::s3("b", "k");
        let mut user = BTreeMap::new();
        user.insert(LEVEL.to_string(), "2".to_string());
        let sent = to_origin(&key, &user, Some("x"), 2);
        assert_eq!(sent, user);
        let mut got = sent.clone();
        assert_eq!(from_origin(&key, &mut got).level, 1);
        assert_eq!(got, user);
    }
}
