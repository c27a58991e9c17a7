//! ListObjects v1 and v2: one page from the origin, merged with the writes and deletes of
//! the bucket still pending upload on any shard, so a client always sees its own writes.
//!
//! Pagination uses nearcache's own continuation tokens (base64 of the last key or common
//! prefix returned); every page is asked of the origin with `start-after`, so a token
//! stays valid whichever node or shard answers the next page.

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

use std::collections::BTreeMap;
use std::fmt::Write;
use std::rc::Rc;

use base64::Engine;
use http::Response;
use nearcache_s3::{ListEntry, ListPage, ListParams};

use super::error::S3Error;
use super::xml::{escape, iso_time, url_encode, DECL, NS};
use super::{xml_response, S3Req};
use crate::body::Body;
use crate::ctx::ShardCtx;

#[derive(Debug, Clone)]
pub(crate) enum Item {
    Object(ListEntry),
    Prefix,
}

/// A ListObjects (v1 or v2) request, parsed.
#[derive(Debug)]
pub(crate) struct ListQuery {
    pub(crate) v2: bool,
    pub(crate) prefix: String,
    pub(crate) delimiter: Option<String>,
    pub(crate) max_keys: usize,
    pub(crate) url: bool,
    pub(crate) token: Option<String>,
    pub(crate) start_after: Option<String>,
    pub(crate) marker: Option<String>,
    /// List after this key (from the token, start-after or marker).
    pub(crate) start: Option<String>,
    pub(crate) fetch_owner: bool,
}

impl ListQuery {
    pub(crate) fn parse(req: &S3Req, v2: bool) -> Result<ListQuery, S3Error> {
        let max_keys = match req.q("max-keys") {
            None => 1000,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| S3Error::invalid_argument("max-keys must be a non-negative integer"))?
                .min(1000) as usize,
        };
        let url = match req.q("encoding-type") {
            None => false,
            Some("url") => true,
            Some(_) => {
                return Err(S3Error::invalid_argument(
                    "Invalid Encoding Method specified in Request",
                ))
            }
        };
        let token = req.q("continuation-token").map(str::to_owned);
        let start_after = req.q("start-after").map(str::to_owned);
        let marker = req.q("marker").map(str::to_owned);
        let start = if v2 {
            match token.as_deref().filter(|t| !t.is_empty()) {
                Some(t) => Some(decode_token(t)?),
                None => start_after.clone().filter(|s| !s.is_empty()),
            }
        } else {
            marker.clone().filter(|s| !s.is_empty())
        };
        Ok(ListQuery {
            v2,
            prefix: req.q("prefix").unwrap_or_default().to_owned(),
            delimiter: req
                .q("delimiter")
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            max_keys,
            url,
            token,
            start_after,
            marker,
            start,
            fetch_owner: !v2 || req.q("fetch-owner") == Some("true"),
        })
    }

    /// ListObjectVersions' query: `key-marker` is the start, as ListObjects v1's marker.
    pub(crate) fn parse_versions(req: &S3Req) -> Result<ListQuery, S3Error> {
        let mut q = ListQuery::parse(req, false)?;
        q.marker = req.q("key-marker").map(str::to_owned);
        q.start = q.marker.clone().filter(|s| !s.is_empty());
        Ok(q)
    }

    /// A key or prefix as the document carries it: escaped, and URL-encoded if asked.
    fn enc(&self, s: &str) -> String {
        if self.url {
            escape(&url_encode(s))
        } else {
            escape(s)
        }
    }

    fn after_start(&self, k: &str) -> bool {
        self.start.as_deref().is_none_or(|s| k > s)
    }
}

/// One page of a listing: what it shows, whether more follow, and where the next
/// page starts.
#[derive(Debug)]
pub(crate) struct Merged {
    pub(crate) taken: Vec<(String, Item)>,
    pub(crate) truncated: bool,
    pub(crate) next: Option<String>,
}

/// Merges the origin's page with the writes and deletes still pending upload (`None`
/// entries are deletes): pending deletes hide origin keys, pending writes appear (as
/// common prefixes when a delimiter groups them), but never past the origin's last key
/// when the origin has more (those belong to a later page).
pub(crate) fn merge(
    q: &ListQuery,
    page: Option<ListPage>,
    pending: &BTreeMap<String, Option<ListEntry>>,
) -> Merged {
    let mut items = BTreeMap::new();
    let mut truncated_origin = false;
    let mut bound = None;
    if let Some(page) = page {
        if page.is_truncated {
            // The origin's last key, even if a pending delete hides it: the origin listed
            // everything up to it, so the pending writes up to it belong on this page.
            bound = (page.entries.iter().map(|e| &e.key))
                .chain(&page.common_prefixes)
                .max()
                .cloned();
        }
        for e in page.entries {
            if matches!(pending.get(&e.key), Some(None)) {
                continue;
            }
            items.insert(e.key.clone(), Item::Object(e));
        }
        for p in page.common_prefixes {
            items.insert(p, Item::Prefix);
        }
        truncated_origin = page.is_truncated;
    }
    if q.max_keys > 0 {
        for (key, entry) in pending {
            let Some(entry) = entry else { continue };
            if bound.as_ref().is_some_and(|b| key > b) {
                continue;
            }
            let rest = key.get(q.prefix.len()..).unwrap_or_default();
            let cp = q.delimiter.as_deref().and_then(|d| {
                rest.find(d)
                    .and_then(|i| {
                        let end = q.prefix.len().checked_add(i)?.checked_add(d.len())?;
                        key.get(..end)
                    })
                    .map(str::to_owned)
            });
            match cp {
                Some(cp) => {
                    items.insert(cp, Item::Prefix);
                }
                None => {
                    items.insert(key.clone(), Item::Object(entry.clone()));
                }
            }
        }
    }
    // A common prefix equal to the start was returned on the previous page.
    items.retain(|k, _| q.after_start(k));
    let truncated = truncated_origin || items.len() > q.max_keys;
    let taken: Vec<(String, Item)> = items.into_iter().take(q.max_keys).collect();
    // When nothing of a truncated origin page is shown (all deleted, or the start itself),
    // the next page starts after the origin's last key. Without one to continue from (an
    // empty page, or only the start again) the listing ends here rather than answer
    // IsTruncated without a token.
    let next = if truncated {
        let origin_last = bound.filter(|b| q.after_start(b));
        taken.last().map(|(k, _)| k.clone()).or(origin_last)
    } else {
        None
    };
    Merged {
        taken,
        truncated: next.is_some(),
        next,
    }
}

pub async fn list_objects(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    v2: bool,
) -> Result<Response<Body>, S3Error> {
    let q = ListQuery::parse(req, v2)?;
    let merged = page(ctx, req.bucket(), &q).await?;
    Ok(xml_response(render(&q, req.bucket(), &merged)))
}

/// ListObjectVersions of a bucket nearcache never versions: every current object is its
/// only version, `null` and latest; there are no delete markers. `key-marker` pages as
/// ListObjects' marker does (each key has one version, so `version-id-marker` adds nothing).
pub async fn list_versions(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    let q = ListQuery::parse_versions(req)?;
    super::ensure_bucket(ctx, req, req.bucket()).await?;
    let merged = page(ctx, req.bucket(), &q).await?;
    Ok(xml_response(render_versions(
        &q,
        req.bucket(),
        req.q("version-id-marker").unwrap_or_default(),
        &merged,
    )))
}

/// One page of the bucket: the origin's merged with the writes and deletes pending upload.
async fn page(ctx: &Rc<ShardCtx>, bucket: &str, q: &ListQuery) -> Result<Merged, S3Error> {
    // Pending writes and deletes of this bucket under the prefix, from every shard.
    let pending: BTreeMap<String, Option<ListEntry>> =
        crate::object::read::pending_under(ctx, bucket, &q.prefix)
            .await?
            .into_iter()
            .collect();
    let page = if q.max_keys == 0 {
        None
    } else {
        let params = ListParams {
            prefix: q.prefix.clone(),
            delimiter: q.delimiter.clone(),
            start_after: q.start.clone(),
            max_keys: origin_max_keys(q, &pending),
        };
        Some(ctx.objects.origin.list_objects(bucket, params).await?)
    };
    Ok(merge(q, page, &pending))
}

/// How many keys to ask the origin for: max-keys, plus the pending deletes ahead (they hide
/// origin keys), plus one when the start is a common prefix (a token after a page that
/// ended on one): S3 lists it again while keys after the start fall under it, and the merge
/// drops it, so with max-keys 1 a page would show nothing and the listing never move on.
/// At most S3's 1000.
pub(crate) fn origin_max_keys(q: &ListQuery, pending: &BTreeMap<String, Option<ListEntry>>) -> u32 {
    let deletes_ahead = pending
        .iter()
        .filter(|(k, e)| e.is_none() && q.after_start(k))
        .count();
    let start_again = match (q.delimiter.as_deref(), q.start.as_deref()) {
        (Some(d), Some(s)) => usize::from(s.ends_with(d)),
        _ => 0,
    };
    q.max_keys
        .saturating_add(deletes_ahead)
        .saturating_add(start_again)
        .min(1000) as u32
}

/// The ListBucketResult document.
fn render(q: &ListQuery, bucket: &str, m: &Merged) -> String {
    let enc = |s: &str| q.enc(s);
    let mut doc = format!(
        "{DECL}<ListBucketResult xmlns=\"{NS}\"><Name>{}</Name><Prefix>{}</Prefix>",
        escape(bucket),
        enc(&q.prefix)
    );
    if q.v2 {
        let _ = write!(doc, "<KeyCount>{}</KeyCount>", m.taken.len());
        if let Some(t) = &q.token {
            let _ = write!(doc, "<ContinuationToken>{}</ContinuationToken>", escape(t));
        }
        if let Some(n) = &m.next {
            let _ = write!(
                doc,
                "<NextContinuationToken>{}</NextContinuationToken>",
                escape(&encode_token(n))
            );
        }
        if let Some(s) = &q.start_after {
            let _ = write!(doc, "<StartAfter>{}</StartAfter>", enc(s));
        }
    } else {
        let _ = write!(
            doc,
            "<Marker>{}</Marker>",
            enc(q.marker.as_deref().unwrap_or_default())
        );
        if let Some(n) = &m.next {
            let _ = write!(doc, "<NextMarker>{}</NextMarker>", enc(n));
        }
    }
    page_params(&mut doc, q, m);
    for (k, item) in &m.taken {
        if let Item::Object(e) = item {
            let _ = write!(
                doc,
                "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag>\
                 <Size>{}</Size>",
                enc(k),
                iso_time(e.last_modified_ms),
                escape(&format!("\"{}\"", e.etag)),
                e.size
            );
            if q.fetch_owner {
                doc.push_str(
                    "<Owner><ID>nearcache</ID><DisplayName>nearcache</DisplayName></Owner>",
                );
            }
            let _ = write!(
                doc,
                "<StorageClass>{}</StorageClass></Contents>",
                escape(e.storage_class.as_deref().unwrap_or("STANDARD"))
            );
        }
    }
    common_prefixes(&mut doc, q, m);
    doc.push_str("</ListBucketResult>");
    doc
}

/// The ListVersionsResult document.
fn render_versions(q: &ListQuery, bucket: &str, version_marker: &str, m: &Merged) -> String {
    let enc = |s: &str| q.enc(s);
    let mut doc = format!(
        "{DECL}<ListVersionsResult xmlns=\"{NS}\"><Name>{}</Name><Prefix>{}</Prefix>\
         <KeyMarker>{}</KeyMarker><VersionIdMarker>{}</VersionIdMarker>",
        escape(bucket),
        enc(&q.prefix),
        enc(q.marker.as_deref().unwrap_or_default()),
        escape(version_marker)
    );
    if let Some(n) = &m.next {
        let _ = write!(
            doc,
            "<NextKeyMarker>{}</NextKeyMarker><NextVersionIdMarker>null</NextVersionIdMarker>",
            enc(n)
        );
    }
    page_params(&mut doc, q, m);
    for (k, item) in &m.taken {
        if let Item::Object(e) = item {
            let _ = write!(
                doc,
                "<Version><Key>{}</Key><VersionId>null</VersionId><IsLatest>true</IsLatest>\
                 <LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size>\
                 <Owner><ID>nearcache</ID><DisplayName>nearcache</DisplayName></Owner>\
                 <StorageClass>{}</StorageClass></Version>",
                enc(k),
                iso_time(e.last_modified_ms),
                escape(&format!("\"{}\"", e.etag)),
                e.size,
                escape(e.storage_class.as_deref().unwrap_or("STANDARD"))
            );
        }
    }
    common_prefixes(&mut doc, q, m);
    doc.push_str("</ListVersionsResult>");
    doc
}

/// MaxKeys, Delimiter, EncodingType and IsTruncated, as both listing documents write them.
fn page_params(doc: &mut String, q: &ListQuery, m: &Merged) {
    let _ = write!(doc, "<MaxKeys>{}</MaxKeys>", q.max_keys);
    if let Some(d) = &q.delimiter {
        let _ = write!(doc, "<Delimiter>{}</Delimiter>", q.enc(d));
    }
    if q.url {
        doc.push_str("<EncodingType>url</EncodingType>");
    }
    let _ = write!(doc, "<IsTruncated>{}</IsTruncated>", m.truncated);
}

/// The page's common prefixes, as both listing documents write them.
fn common_prefixes(doc: &mut String, q: &ListQuery, m: &Merged) {
    for (k, item) in &m.taken {
        if let Item::Prefix = item {
            let _ = write!(
                doc,
                "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                q.enc(k)
            );
        }
    }
}

fn encode_token(last: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("nc1:{last}"))
}

fn decode_token(t: &str) -> Result<String, S3Error> {
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("nc1:").map(str::to_owned))
        .ok_or_else(|| S3Error::invalid_argument("The continuation token provided is incorrect"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> ListEntry {
        ListEntry {
            key: key.into(),
            size: 1,
            etag: "e".into(),
            last_modified_ms: 0,
            storage_class: None,
        }
    }

    fn query(
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
        start: Option<&str>,
    ) -> ListQuery {
        ListQuery {
            v2: true,
            prefix: prefix.into(),
            delimiter: delimiter.map(Into::into),
            max_keys,
            url: false,
            token: None,
            start_after: None,
            marker: None,
            start: start.map(Into::into),
            fetch_owner: false,
        }
    }

    fn keys(m: &Merged) -> Vec<&str> {
        m.taken.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn page(entries: &[&str], prefixes: &[&str], truncated: bool) -> Option<ListPage> {
        Some(ListPage {
            entries: entries.iter().map(|k| entry(k)).collect(),
            common_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            is_truncated: truncated,
        })
    }

    #[test]
    fn pending_writes_show_and_pending_deletes_hide() {
        let pending =
            BTreeMap::from([("b".to_string(), None), ("d".to_string(), Some(entry("d")))]);
        let m = merge(
            &query("", None, 1000, None),
            page(&["a", "b", "c"], &[], false),
            &pending,
        );
        assert_eq!(keys(&m), ["a", "c", "d"]);
        assert!(!m.truncated);
        assert_eq!(m.next, None);
    }

    #[test]
    fn pending_writes_group_under_the_delimiter() {
        let pending = BTreeMap::from([
            ("p/x/1".to_string(), Some(entry("p/x/1"))),
            ("p/y".to_string(), Some(entry("p/y"))),
        ]);
        let m = merge(
            &query("p/", Some("/"), 1000, None),
            page(&[], &[], false),
            &pending,
        );
        assert_eq!(keys(&m), ["p/x/", "p/y"]);
        assert!(matches!(m.taken[0].1, Item::Prefix));
    }

    #[test]
    fn pending_writes_past_a_truncated_origin_page_wait_for_their_page() {
        let pending = BTreeMap::from([
            ("a2".to_string(), Some(entry("a2"))),
            ("z".to_string(), Some(entry("z"))),
        ]);
        let m = merge(
            &query("", None, 1000, None),
            page(&["a1", "a3"], &[], true),
            &pending,
        );
        assert_eq!(keys(&m), ["a1", "a2", "a3"]);
        assert!(m.truncated);
        assert_eq!(m.next.as_deref(), Some("a3"));
    }

    #[test]
    fn max_keys_truncates_and_start_excludes() {
        let pending = BTreeMap::from([("c".to_string(), Some(entry("c")))]);
        let m = merge(
            &query("", None, 2, Some("a")),
            page(&["a", "b", "d"], &[], false),
            &pending,
        );
        assert_eq!(keys(&m), ["b", "c"]);
        assert!(m.truncated);
        assert_eq!(m.next.as_deref(), Some("c"));
        let none = merge(&query("", None, 0, None), None, &pending);
        assert!(none.taken.is_empty() && !none.truncated);
    }

    #[test]
    fn tokens_round_trip() {
        let t = encode_token("a/b c");
        assert_eq!(decode_token(&t).unwrap(), "a/b c");
        assert!(decode_token("garbage!").is_err());
    }
}
