//! What the configuration allows: the node-wide read-only switch and the per-bucket
//! settings (`read_only`, `cache_on_write`). Every API edge asks here, so a bucket is
//! read-only (or pass-through) whichever API writes to it.

use super::{CacheKey, ObjectError};
use crate::config::Config;

/// Refuses a write or delete when the node is read-only, or `bucket` is (None: a native
/// id, which only the node-wide switch covers).
pub fn check_write(cfg: &Config, bucket: Option<&str>) -> Result<(), ObjectError> {
    if cfg.api.read_only {
        return Err(ObjectError::ReadOnly(
            "this node is read-only (api.read_only / --read-only): writes and deletes are refused"
                .into(),
        ));
    }
    if let Some(b) = bucket {
        if cfg.bucket(b).is_some_and(|c| c.read_only) {
            return Err(ObjectError::ReadOnly(format!(
                "bucket {b} is read-only ([[s3api.buckets]] read_only): writes and deletes are refused"
            )));
        }
    }
    Ok(())
}

/// Whether a write of `key` is kept in the cache (false: passed through to the origin
/// only, for a bucket with `cache_on_write = false`).
pub fn caches_writes(cfg: &Config, key: &CacheKey) -> bool {
    key.bucket()
        .and_then(|b| cfg.bucket(b))
        .is_none_or(|c| c.cache_on_write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3BucketConfig;

    fn cfg() -> Config {
        let mut c = Config::default();
        c.s3api.buckets = vec![
            S3BucketConfig {
                name: "ro".into(),
                write_behind: false,
                cache_on_write: true,
                read_only: true,
                ..Default::default()
            },
            S3BucketConfig {
                name: "pass".into(),
                write_behind: false,
                cache_on_write: false,
                read_only: false,
                ..Default::default()
            },
        ];
        c
    }

    #[test]
    fn read_only_buckets_and_nodes_refuse_writes() {
        let mut c = cfg();
        assert!(check_write(&c, Some("ro")).is_err());
        assert!(check_write(&c, Some("pass")).is_ok());
        assert!(check_write(&c, None).is_ok());
        c.api.read_only = true;
        let e = check_write(&c, None).unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        assert!(check_write(&c, Some("pass")).is_err());
    }

    #[test]
    fn the_switches_come_from_toml_and_flags() {
        let mut c: Config = toml::from_str(
            "[[s3api.buckets]]\nname = \"b\"\nread_only = true\ncache_on_write = false\n\n\
             [[s3api.buckets]]\nname = \"plain\"\n",
        )
        .unwrap();
        assert!(check_write(&c, Some("b")).is_err());
        assert!(!caches_writes(&c, &CacheKey::s3("b", "k")));
        assert!(
            caches_writes(&c, &CacheKey::s3("plain", "k")),
            "on unless switched off"
        );
        assert!(check_write(&c, Some("plain")).is_ok());
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: crate::config::ServeArgs,
        }
        use clap::Parser;
        for (argv, want) in [
            (&["nc", "--read-only"][..], true),
            (&["nc", "--read-only", "true"][..], true),
            (&["nc", "--read-only", "false"][..], false),
        ] {
            let mut c2 = c.clone();
            c2.apply_args(&Cli::try_parse_from(argv).unwrap().args);
            assert_eq!(c2.api.read_only, want, "{argv:?}");
        }
        c.api.read_only = true;
        assert!(check_write(&c, Some("plain")).is_err());
    }

    #[test]
    fn cache_on_write_is_per_bucket_and_on_by_default() {
        let c = cfg();
        assert!(!caches_writes(&c, &CacheKey::s3("pass", "k")));
        assert!(caches_writes(&c, &CacheKey::s3("ro", "k")));
        assert!(caches_writes(&c, &CacheKey::s3("other", "k")));
        assert!(caches_writes(&c, &CacheKey::native("01J")));
    }
}
