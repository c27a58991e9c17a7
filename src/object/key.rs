//! The typed cache key: a native id or an S3 bucket + key, and where it lives in the
//! origin.
//!
//! The store, the journal and the cluster know a key by its text: a native id as is
//! (a ULID: never contains '/'), an S3-API object as `BUCKET/KEY` (always contains '/').
//! So the two APIs' keys cannot collide, and [`CacheKey::from_stored`] is the one place
//! that reads a stored key back into its kind.

use nearcache_s3::ObjectLoc;

/// Longest cache key the shard store takes (LMDB's key limit).
pub const MAX_CACHE_KEY: usize = 511;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    text: String,
    /// S3 API: the bucket is `text[..len]`, the key `text[len + 1..]`. None: a native id.
    bucket_len: Option<usize>,
}

/// Where an object lives in the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// The configured bucket (with its prefix), under the id.
    Native(&'a str),
    /// A bucket and key named by the S3 API.
    Bucket { bucket: &'a str, key: &'a str },
}

impl CacheKey {
    /// A native API id (already validated as a canonical ULID by the edge).
    pub fn native(id: impl Into<String>) -> CacheKey {
        CacheKey {
            text: id.into(),
            bucket_len: None,
        }
    }

    /// An S3-API object.
    pub fn s3(bucket: &str, key: &str) -> CacheKey {
        let mut text = String::with_capacity(bucket.len() + 1 + key.len());
        text.push_str(bucket);
        text.push('/');
        text.push_str(key);
        CacheKey {
            text,
            bucket_len: Some(bucket.len()),
        }
    }

    /// Reads back a key as the store, journal or a peer spells it.
    pub fn from_stored(text: &str) -> CacheKey {
        CacheKey {
            text: text.to_owned(),
            bucket_len: text.find('/'),
        }
    }

    /// The key as the store, the journal and placement know it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }

    /// Whether the store can hold it (longer keys are passed through, never cached).
    pub fn fits_store(&self) -> bool {
        self.text.len() <= MAX_CACHE_KEY
    }

    pub fn origin(&self) -> Origin<'_> {
        match self.bucket_len {
            None => Origin::Native(&self.text),
            Some(n) => {
                let (bucket, rest) = self.text.split_at(n);
                Origin::Bucket {
                    bucket,
                    key: rest.strip_prefix('/').unwrap_or(rest),
                }
            }
        }
    }

    /// The S3 location for a bucket-addressed key (None: a native id).
    pub fn loc(&self) -> Option<ObjectLoc> {
        match self.origin() {
            Origin::Native(_) => None,
            Origin::Bucket { bucket, key } => Some(ObjectLoc {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            }),
        }
    }

    /// The bucket of an S3-API key.
    pub fn bucket(&self) -> Option<&str> {
        match self.origin() {
            Origin::Native(_) => None,
            Origin::Bucket { bucket, .. } => Some(bucket),
        }
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_round_trip_through_their_stored_text() {
        let n = CacheKey::native("01J0000000000000000000000A");
        assert_eq!(CacheKey::from_stored(n.as_str()), n);
        assert_eq!(n.origin(), Origin::Native("01J0000000000000000000000A"));
        assert_eq!(n.loc(), None);

        for (b, k) in [
            ("bkt", "a"),
            ("bkt", "dir/sub/x y+%.bin"),
            ("bkt", "//"),
            ("bkt", "trailing/"),
            ("b.k-t", "ключ?#"),
        ] {
            let s = CacheKey::s3(b, k);
            assert_eq!(s.as_str(), format!("{b}/{k}"));
            assert_eq!(CacheKey::from_stored(s.as_str()), s);
            assert_eq!(s.origin(), Origin::Bucket { bucket: b, key: k });
            let loc = s.loc().unwrap();
            assert_eq!((loc.bucket.as_str(), loc.key.as_str()), (b, k));
        }
    }

    #[test]
    fn long_keys_do_not_fit_the_store() {
        assert!(CacheKey::s3("b", &"k".repeat(MAX_CACHE_KEY - 2)).fits_store());
        assert!(!CacheKey::s3("b", &"k".repeat(MAX_CACHE_KEY - 1)).fits_store());
    }
}
