//! ListObjects v1 and v2: one page from the origin, merged with the writes and deletes of
//! the bucket still pending upload on any shard, so a client always sees its own writes.
//!
//! Pagination uses nearcache's own continuation tokens (base64 of the last key or common
//! prefix returned); every page is asked of the origin with `start-after`, so a token
//! stays valid whichever node or shard answers the next page.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::rc::Rc;

use base64::Engine;
use http::Response;
use nearcache_s3::{ListEntry, ListParams};

use super::error::S3Error;
use super::xml::{escape, iso_time, url_encode, DECL, NS};
use super::{xml_response, S3Req};
use crate::body::Body;
use crate::ctx::ShardCtx;

enum Item {
    Object(ListEntry),
    Prefix,
}

pub async fn list_objects(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    v2: bool,
) -> Result<Response<Body>, S3Error> {
    let prefix = req.q("prefix").unwrap_or_default().to_owned();
    let delimiter = req
        .q("delimiter")
        .filter(|d| !d.is_empty())
        .map(str::to_owned);
    let max_keys = match req.q("max-keys") {
        None => 1000,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|&n| n >= 0)
            .ok_or_else(|| S3Error::invalid_argument("max-keys must be a non-negative integer"))?
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
        match &token {
            Some(t) => Some(decode_token(t)?),
            None => start_after.clone().filter(|s| !s.is_empty()),
        }
    } else {
        marker.clone().filter(|s| !s.is_empty())
    };
    let bucket = req.bucket().to_owned();

    // Pending writes and deletes of this bucket under the prefix, from every shard.
    let per_shard = crate::object::read::pending_under(ctx, &bucket, &prefix).await?;
    let pending: BTreeMap<String, Option<ListEntry>> = per_shard.into_iter().collect();
    let after_start = |k: &str| start.as_deref().is_none_or(|s| k > s);
    let deletes_ahead = pending
        .iter()
        .filter(|(k, e)| e.is_none() && after_start(k))
        .count();

    let (mut items, truncated_origin, bound) = if max_keys == 0 {
        (BTreeMap::new(), false, None)
    } else {
        let page = ctx
            .objects
            .origin
            .list_objects(
                &bucket,
                ListParams {
                    prefix: prefix.clone(),
                    delimiter: delimiter.clone(),
                    start_after: start.clone(),
                    max_keys: (max_keys + deletes_ahead).min(1000) as u32,
                },
            )
            .await?;
        let mut items = BTreeMap::new();
        for e in page.entries {
            if matches!(pending.get(&e.key), Some(None)) {
                continue;
            }
            items.insert(e.key.clone(), Item::Object(e));
        }
        for p in page.common_prefixes {
            items.insert(p, Item::Prefix);
        }
        // Pending writes beyond the origin's last answer belong to a later page.
        let bound = if page.is_truncated {
            items.keys().next_back().cloned()
        } else {
            None
        };
        (items, page.is_truncated, bound)
    };
    if max_keys > 0 {
        for (key, entry) in &pending {
            let Some(entry) = entry else { continue };
            if bound.as_ref().is_some_and(|b| key > b) {
                continue;
            }
            let cp = delimiter.as_deref().and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|i| key[..prefix.len() + i + d.len()].to_owned())
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
    items.retain(|k, _| after_start(k));
    let truncated = truncated_origin || items.len() > max_keys;
    let taken: Vec<(String, Item)> = items.into_iter().take(max_keys).collect();
    let next = if truncated {
        taken.last().map(|(k, _)| k.clone())
    } else {
        None
    };

    let enc = |s: &str| {
        if url {
            escape(&url_encode(s))
        } else {
            escape(s)
        }
    };
    let mut doc = format!(
        "{DECL}<ListBucketResult xmlns=\"{NS}\"><Name>{}</Name><Prefix>{}</Prefix>",
        escape(&bucket),
        enc(&prefix)
    );
    if v2 {
        let _ = write!(doc, "<KeyCount>{}</KeyCount>", taken.len());
        if let Some(t) = &token {
            let _ = write!(doc, "<ContinuationToken>{}</ContinuationToken>", escape(t));
        }
        if let Some(n) = &next {
            let _ = write!(
                doc,
                "<NextContinuationToken>{}</NextContinuationToken>",
                escape(&encode_token(n))
            );
        }
        if let Some(s) = &start_after {
            let _ = write!(doc, "<StartAfter>{}</StartAfter>", enc(s));
        }
    } else {
        let _ = write!(
            doc,
            "<Marker>{}</Marker>",
            enc(marker.as_deref().unwrap_or_default())
        );
        if let Some(n) = &next {
            let _ = write!(doc, "<NextMarker>{}</NextMarker>", enc(n));
        }
    }
    let _ = write!(doc, "<MaxKeys>{max_keys}</MaxKeys>");
    if let Some(d) = &delimiter {
        let _ = write!(doc, "<Delimiter>{}</Delimiter>", enc(d));
    }
    if url {
        doc.push_str("<EncodingType>url</EncodingType>");
    }
    let _ = write!(doc, "<IsTruncated>{truncated}</IsTruncated>");
    let fetch_owner = !v2 || req.q("fetch-owner") == Some("true");
    for (k, item) in &taken {
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
            if fetch_owner {
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
    for (k, item) in &taken {
        if let Item::Prefix = item {
            let _ = write!(
                doc,
                "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                enc(k)
            );
        }
    }
    doc.push_str("</ListBucketResult>");
    Ok(xml_response(doc))
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

    #[test]
    fn tokens_round_trip() {
        let t = encode_token("a/b c");
        assert_eq!(decode_token(&t).unwrap(), "a/b c");
        assert!(decode_token("garbage!").is_err());
    }
}
