//! Freshness: which rule applies to a key, whether a stored copy is fresh, stale but
//! servable, or must be revalidated; the origin's `Cache-Control` and `Expires`; and the
//! per-shard memory of origin 404s (negative caching).
//!
//! Time is measured from `ObjectMeta::validated_ms`: when the version was written,
//! fetched, or last confirmed by a 304. Copies not yet in the origin are never stale:
//! nearcache holds the newest version until its upload lands.

// Client input must not be able to panic this code (see README, "Errors and logs").
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used
    )
)]

use std::collections::{BTreeMap, HashMap};

use nearcache_shards::ObjectMeta;

use super::key::{CacheKey, Origin};
use crate::config::{FreshnessConfig, FreshnessRule};

/// Wall-clock milliseconds since the Unix epoch (freshness is wall-clock time, as
/// `Cache-Control` and `Expires` are).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The freshness settings that apply to one key (a `[[freshness.rule]]` merged over the
/// `[freshness]` defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// 0 = never stale.
    pub ttl_secs: u64,
    pub honour_origin: bool,
    pub stale_while_revalidate_secs: u64,
    pub stale_if_error_secs: u64,
}

/// The `[freshness]` rules, ready for lookups.
#[derive(Debug, Clone)]
pub struct Rules {
    default: Rule,
    /// (bucket or "*", prefix, rule), longest prefix first.
    rules: Vec<(String, String, Rule)>,
    /// The bucket native-API objects live in (rules name it like any bucket).
    native_bucket: String,
    pub negative_ttl_ms: u64,
    pub negative_max_entries: usize,
}

impl Rules {
    pub fn new(cfg: &FreshnessConfig, native_bucket: Option<&str>) -> Rules {
        let default = Rule {
            ttl_secs: cfg.ttl_secs,
            honour_origin: cfg.honour_origin,
            stale_while_revalidate_secs: cfg.stale_while_revalidate_secs,
            stale_if_error_secs: cfg.stale_if_error_secs,
        };
        let merge = |r: &FreshnessRule| Rule {
            ttl_secs: r.ttl_secs.unwrap_or(default.ttl_secs),
            honour_origin: r.honour_origin.unwrap_or(default.honour_origin),
            stale_while_revalidate_secs: r
                .stale_while_revalidate_secs
                .unwrap_or(default.stale_while_revalidate_secs),
            stale_if_error_secs: r.stale_if_error_secs.unwrap_or(default.stale_if_error_secs),
        };
        let mut rules: Vec<_> = cfg
            .rule
            .iter()
            .map(|r| (r.bucket.clone(), r.prefix.clone(), merge(r)))
            .collect();
        // Longest prefix first; a named bucket before "*" for the same prefix length.
        rules.sort_by(|a, b| {
            b.1.len()
                .cmp(&a.1.len())
                .then_with(|| (a.0 == "*").cmp(&(b.0 == "*")))
        });
        Rules {
            default,
            rules,
            native_bucket: native_bucket.unwrap_or_default().to_owned(),
            negative_ttl_ms: cfg.negative_ttl_secs.saturating_mul(1000),
            negative_max_entries: cfg.negative_max_entries.max(1),
        }
    }

    /// The rule for `key`: the longest matching prefix of a rule for its bucket or `*`.
    pub fn rule_for(&self, key: &CacheKey) -> Rule {
        let (bucket, name) = match key.origin() {
            Origin::Native(id) => (self.native_bucket.as_str(), id),
            Origin::Bucket { bucket, key } => (bucket, key),
        };
        self.rules
            .iter()
            .find(|(b, p, _)| (b == "*" || b == bucket) && name.starts_with(p.as_str()))
            .map_or(self.default, |(_, _, r)| *r)
    }
}

/// What the origin's headers say about caching an object, for a shared cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginDirectives {
    /// s-maxage, else max-age (seconds).
    pub max_age: Option<u64>,
    /// no-cache: store, but revalidate before every use.
    pub no_cache: bool,
    /// no-store or private: a shared cache must not keep it.
    pub no_store: bool,
    /// must-revalidate / proxy-revalidate: never serve it stale.
    pub must_revalidate: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Expires, as wall-clock ms (an unparsable Expires means already expired).
    pub expires_ms: Option<u64>,
}

/// Parses `Cache-Control` and `Expires` as stored with an object (lowercase names).
pub fn origin_directives(headers: &BTreeMap<String, String>) -> OriginDirectives {
    let mut d = OriginDirectives::default();
    if let Some(cc) = headers.get("cache-control") {
        let mut max_age = None;
        let mut s_maxage = None;
        for (name, value) in cache_control(cc) {
            let secs = || value.and_then(|v| v.parse::<u64>().ok());
            match name.as_str() {
                "max-age" => max_age = secs().or(Some(0)),
                "s-maxage" => s_maxage = secs().or(Some(0)),
                "no-cache" => d.no_cache = true,
                "no-store" | "private" => d.no_store = true,
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                "stale-if-error" => d.stale_if_error = secs(),
                _ => {}
            }
        }
        d.max_age = s_maxage.or(max_age);
    }
    if let Some(e) = headers.get("expires") {
        // RFC 9111: an invalid date (such as "0") means already expired.
        d.expires_ms = Some(
            httpdate::parse_http_date(e.trim())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64),
        );
    }
    d
}

/// The directives of a `Cache-Control` value: lowercase names, values unquoted. Bad
/// pieces are skipped (a cache must not fail on a header it cannot read).
pub fn cache_control(value: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        // One directive: token [ "=" ( token / quoted-string ) ], up to the next comma
        // outside quotes.
        let (piece, next) = split_directive(rest);
        rest = next;
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        let (name, value) = match piece.split_once('=') {
            None => (piece, None),
            Some((n, v)) => {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                (n.trim(), Some(v.replace('\\', "")))
            }
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            continue;
        }
        out.push((name.to_ascii_lowercase(), value));
    }
    out
}

/// A token character (RFC 9110, 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits `s` at the first comma that is not inside a quoted string.
fn split_directive(s: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                // `i` is a char boundary and ',' one byte long.
                let (piece, rest) = s.split_at(i);
                return (piece, rest.get(1..).unwrap_or_default());
            }
            _ => {}
        }
    }
    (s, "")
}

/// A stored copy's standing at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Serve it.
    Fresh,
    /// Past its freshness: revalidate. `serve_while_revalidating`: answer with this copy
    /// now and revalidate in the background. `serve_on_error_ms`: until when (wall ms) it
    /// may be answered if revalidation fails.
    Stale {
        serve_while_revalidating: bool,
        serve_on_error_until_ms: u64,
    },
}

/// Whether an object with these headers may be kept by a shared cache at all, under
/// `rule`.
pub fn storable(rule: Rule, headers: &BTreeMap<String, String>) -> bool {
    !(rule.honour_origin && origin_directives(headers).no_store)
}

/// The standing of `meta` at `now_ms` under `rule`; `directives` are its headers'
/// ([`origin_directives`], parsed once per stored version by the caller).
pub fn standing(
    rule: Rule,
    meta: &ObjectMeta,
    directives: &OriginDirectives,
    now_ms: u64,
) -> Standing {
    // Until its upload lands, nearcache holds the newest version; the origin's is older.
    if !meta.in_origin {
        return Standing::Fresh;
    }
    let d = if rule.honour_origin {
        *directives
    } else {
        OriginDirectives::default()
    };
    let since = meta.validated_ms;
    // When it goes stale (wall ms); None: never.
    let stale_at = if d.no_cache {
        Some(since)
    } else if let Some(secs) = d.max_age {
        Some(since.saturating_add(secs.saturating_mul(1000)))
    } else if let Some(at) = d.expires_ms {
        Some(at)
    } else if rule.ttl_secs > 0 {
        Some(since.saturating_add(rule.ttl_secs.saturating_mul(1000)))
    } else {
        None
    };
    let Some(stale_at) = stale_at else {
        return Standing::Fresh;
    };
    if now_ms < stale_at {
        return Standing::Fresh;
    }
    if d.must_revalidate {
        return Standing::Stale {
            serve_while_revalidating: false,
            serve_on_error_until_ms: 0,
        };
    }
    let swr = d
        .stale_while_revalidate
        .unwrap_or(rule.stale_while_revalidate_secs);
    let sie = d.stale_if_error.unwrap_or(rule.stale_if_error_secs);
    Standing::Stale {
        serve_while_revalidating: now_ms < stale_at.saturating_add(swr.saturating_mul(1000)),
        serve_on_error_until_ms: stale_at.saturating_add(sie.saturating_mul(1000)),
    }
}

/// Origin 404s remembered by one shard: key -> until (wall ms).
#[derive(Default)]
pub struct NegativeCache {
    entries: HashMap<String, u64>,
}

impl NegativeCache {
    /// Whether `key` is remembered as missing at `now_ms` (an expired entry is dropped).
    pub fn is_missing(&mut self, key: &str, now_ms: u64) -> bool {
        match self.entries.get(key) {
            Some(&until) if now_ms < until => true,
            Some(_) => {
                self.entries.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers `key` as missing until `until_ms`; keeps at most `max` entries.
    pub fn remember(&mut self, key: &str, until_ms: u64, now_ms: u64, max: usize) {
        if self.entries.len() >= max {
            self.entries.retain(|_, &mut u| u > now_ms);
            if self.entries.len() >= max {
                // Still full of live entries: drop the half that expires first.
                let mut untils: Vec<u64> = self.entries.values().copied().collect();
                let mid = untils.len() / 2;
                let (_, &mut cut, _) = untils.select_nth_unstable(mid);
                self.entries.retain(|_, &mut u| u > cut);
            }
        }
        self.entries.insert(key.to_owned(), until_ms);
    }

    pub fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn meta(validated_ms: u64, hs: &[(&str, &str)]) -> ObjectMeta {
        test_meta(validated_ms, true, headers(hs))
    }

    /// A fetched object's metadata with the fields freshness reads.
    pub(crate) fn test_meta(
        validated_ms: u64,
        in_origin: bool,
        headers: BTreeMap<String, String>,
    ) -> ObjectMeta {
        ObjectMeta {
            key: "b/k".into(),
            size: 1,
            etag: "e".into(),
            crc32c: 0,
            content_type: None,
            name: None,
            user_meta: BTreeMap::new(),
            last_modified_ms: 0,
            hlc: 1,
            seq: 1,
            level: 1,
            in_origin,
            provenance: nearcache_shards::Provenance::Fetched,
            headers,
            validated_ms,
            inline: false,
            derived: Default::default(),
        }
    }

    fn st(rule: Rule, m: &ObjectMeta, now_ms: u64) -> Standing {
        standing(rule, m, &origin_directives(&m.headers), now_ms)
    }

    const RULE: Rule = Rule {
        ttl_secs: 10,
        honour_origin: true,
        stale_while_revalidate_secs: 5,
        stale_if_error_secs: 60,
    };

    #[test]
    fn cache_control_parses_tokens_and_quoted_values() {
        let d = cache_control(r#"Max-Age=60, no-cache="set-cookie, x", , private, s-maxage = 5"#);
        assert_eq!(
            d,
            vec![
                ("max-age".into(), Some("60".into())),
                ("no-cache".into(), Some("set-cookie, x".into())),
                ("private".into(), None),
                ("s-maxage".into(), Some("5".into())),
            ]
        );
        assert!(cache_control("").is_empty());
        assert!(cache_control(",,=,\"").is_empty());
    }

    #[test]
    fn s_maxage_beats_max_age_and_expires() {
        let d = origin_directives(&headers(&[
            ("cache-control", "max-age=60, s-maxage=5"),
            ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
        ]));
        assert_eq!(d.max_age, Some(5));
        let m = meta(1_000_000, &[("cache-control", "max-age=60, s-maxage=5")]);
        assert_eq!(st(RULE, &m, 1_004_999), Standing::Fresh);
        assert!(matches!(st(RULE, &m, 1_005_000), Standing::Stale { .. }));
    }

    #[test]
    fn ttl_applies_without_origin_headers_and_zero_means_never_stale() {
        let m = meta(1_000_000, &[]);
        assert_eq!(st(RULE, &m, 1_009_999), Standing::Fresh);
        assert_eq!(
            st(RULE, &m, 1_010_000),
            Standing::Stale {
                serve_while_revalidating: true,
                serve_on_error_until_ms: 1_070_000
            }
        );
        assert_eq!(
            st(RULE, &m, 1_015_000),
            Standing::Stale {
                serve_while_revalidating: false,
                serve_on_error_until_ms: 1_070_000
            }
        );
        let never = Rule {
            ttl_secs: 0,
            ..RULE
        };
        assert_eq!(st(never, &m, u64::MAX), Standing::Fresh);
    }

    #[test]
    fn origin_headers_are_ignored_unless_honoured() {
        let m = meta(1_000_000, &[("cache-control", "no-cache")]);
        assert!(matches!(st(RULE, &m, 1_000_000), Standing::Stale { .. }));
        let ignore = Rule {
            honour_origin: false,
            ..RULE
        };
        assert_eq!(st(ignore, &m, 1_000_000), Standing::Fresh);
        assert!(!storable(RULE, &headers(&[("cache-control", "no-store")])));
        assert!(!storable(RULE, &headers(&[("cache-control", "private")])));
        assert!(storable(ignore, &headers(&[("cache-control", "no-store")])));
    }

    #[test]
    fn must_revalidate_forbids_stale_answers_and_bad_expires_is_expired() {
        let m = meta(0, &[("cache-control", "max-age=1, must-revalidate")]);
        assert_eq!(
            st(RULE, &m, 5_000),
            Standing::Stale {
                serve_while_revalidating: false,
                serve_on_error_until_ms: 0
            }
        );
        let m = meta(1_000, &[("expires", "0")]);
        assert!(matches!(st(RULE, &m, 1_000), Standing::Stale { .. }));
    }

    #[test]
    fn copies_not_yet_in_the_origin_are_never_stale() {
        let mut m = meta(0, &[("cache-control", "no-cache")]);
        m.in_origin = false;
        assert_eq!(st(RULE, &m, u64::MAX), Standing::Fresh);
    }

    #[test]
    fn the_longest_prefix_of_the_right_bucket_wins() {
        let cfg = FreshnessConfig {
            ttl_secs: 1,
            rule: vec![
                FreshnessRule {
                    bucket: "*".into(),
                    prefix: "a/".into(),
                    ttl_secs: Some(2),
                    honour_origin: None,
                    stale_while_revalidate_secs: None,
                    stale_if_error_secs: None,
                },
                FreshnessRule {
                    bucket: "b".into(),
                    prefix: "a/b/".into(),
                    ttl_secs: Some(3),
                    honour_origin: Some(false),
                    stale_while_revalidate_secs: None,
                    stale_if_error_secs: None,
                },
                FreshnessRule {
                    bucket: "native".into(),
                    prefix: String::new(),
                    ttl_secs: Some(4),
                    honour_origin: None,
                    stale_while_revalidate_secs: None,
                    stale_if_error_secs: None,
                },
            ],
            ..Default::default()
        };
        let rules = Rules::new(&cfg, Some("native"));
        assert_eq!(rules.rule_for(&CacheKey::s3("b", "a/b/c")).ttl_secs, 3);
        assert!(!rules.rule_for(&CacheKey::s3("b", "a/b/c")).honour_origin);
        assert_eq!(rules.rule_for(&CacheKey::s3("c", "a/b/c")).ttl_secs, 2);
        assert_eq!(rules.rule_for(&CacheKey::s3("c", "x")).ttl_secs, 1);
        assert_eq!(rules.rule_for(&CacheKey::native("01ABC")).ttl_secs, 4);
    }

    #[test]
    fn negative_cache_expires_and_stays_bounded() {
        let mut n = NegativeCache::default();
        n.remember("a", 100, 0, 10);
        assert!(n.is_missing("a", 99));
        assert!(!n.is_missing("a", 100));
        assert!(n.is_empty());
        for i in 0..1000u64 {
            n.remember(&format!("k{i}"), 10_000 + i, 0, 100);
            assert!(n.len() <= 100);
        }
        // The newest is always kept.
        assert!(n.is_missing("k999", 0));
        n.forget("k999");
        assert!(!n.is_missing("k999", 0));
    }
}
