//! GetObject / HeadObject with `partNumber`: a ranged read of one part of the object,
//! served from the cache like any range.
//!
//! A multipart object's ETag ends in `-N` (its part count); the byte range of part `k` is
//! the sum of the sizes of parts `1..k`, learned once from the origin (HeadObject with
//! `partNumber=i` answers part `i`'s size) and kept per object version (key and ETag). An
//! object that is not multipart has one part, the whole object. A part past the last is
//! S3's 416 `InvalidPartNumber`.

use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Mutex;

use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use super::error::S3Error;
use super::render::S3Render;
use super::S3Req;
use crate::body::Body;
use crate::ctx::ShardCtx;
use crate::http_util::{quoted, ByteRangeSpec, Conditions};
use crate::object::read::{GetRequest, Stat};

/// Object versions whose part sizes are kept; past it the table starts over (an entry is
/// cheap to learn again: one origin HEAD per part).
const MAX_LAYOUTS: usize = 4096;

/// Part sizes of multipart objects, by cache key, for the version (ETag) they were learned
/// for. Node-wide: any shard may serve a part read.
#[derive(Default)]
pub(crate) struct Layouts(Mutex<HashMap<String, Layout>>);

struct Layout {
    etag: String,
    /// Sizes of parts 1..=len (learned in order, as far as reads have needed).
    sizes: Vec<u64>,
}

impl Layouts {
    /// Known sizes of parts 1..=n (fewer if not learned yet) of version `etag`.
    fn known(&self, key: &str, etag: &str, n: usize) -> Vec<u64> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(l) if l.etag == etag => l.sizes.iter().take(n).copied().collect(),
            _ => Vec::new(),
        }
    }

    fn learn(&self, key: &str, etag: &str, sizes: Vec<u64>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_LAYOUTS && !map.contains_key(key) {
            map.clear();
        }
        let keep = match map.get(key) {
            Some(l) => l.etag != etag || l.sizes.len() < sizes.len(),
            None => true,
        };
        if keep {
            map.insert(
                key.to_owned(),
                Layout {
                    etag: etag.to_owned(),
                    sizes,
                },
            );
        }
    }
}

/// `partNumber`: an integer from 1 to 10000.
pub(crate) fn parse_part_number(v: &str) -> Result<u32, S3Error> {
    match v.parse::<u32>() {
        Ok(n @ 1..=10_000) => Ok(n),
        _ => Err(S3Error::invalid_argument(
            "Part number must be an integer between 1 and 10000, inclusive",
        )),
    }
}

/// The part count of a multipart ETag (`<32 hex>-N`, N from 1 to 10000); None for any
/// other ETag (a single-part object).
pub(crate) fn multipart_parts(etag: &str) -> Option<u32> {
    let (md5, n) = etag.split_once('-')?;
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse::<u32>().ok().filter(|n| (1..=10_000).contains(n))
}

/// The byte range of the last part of `sizes` (parts 1..=k), if it lies in an object of
/// `size` bytes.
pub(crate) fn part_range(sizes: &[u64], size: u64) -> Option<Range<u64>> {
    let (last, before) = sizes.split_last()?;
    let start = before.iter().try_fold(0u64, |a, &s| a.checked_add(s))?;
    let end = start.checked_add(*last)?;
    (end <= size).then_some(start..end)
}

/// Whether a part's HEAD describes the version with ETag `etag` of `n` parts. S3 answers
/// with the object's ETag; moto with the part's own (an MD5 without a part count), which
/// is taken as the same version when the part count matches.
fn same_version(part: &nearcache_s3::RemoteMeta, etag: &str, n: u32) -> bool {
    let count_ok = part.parts_count.is_none_or(|c| c == n);
    count_ok && (part.etag == etag || multipart_parts(&part.etag).is_none())
}

fn invalid_part() -> S3Error {
    S3Error::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "InvalidPartNumber",
        "The requested partnumber is not satisfiable",
    )
}

/// What a part read resolved to.
enum Plan {
    /// Read this range (None: the whole, empty object) of the version with this ETag.
    Range {
        etag: String,
        range: Option<Range<u64>>,
        parts: Option<u32>,
    },
    /// The origin's object is not the version described (it changed meanwhile).
    Stale,
}

/// The range of part `part` of the current version of the addressed object.
async fn plan(ctx: &Rc<ShardCtx>, req: &S3Req, part: u32) -> Result<Plan, S3Error> {
    let key = req.cache_key();
    let (etag, size) = match crate::object::read::stat(ctx, key.clone(), true).await? {
        Stat::Cached(m) => (m.etag, m.size),
        Stat::Origin(r, _) => (r.etag, r.size),
    };
    let Some(n) = multipart_parts(&etag) else {
        if part != 1 {
            return Err(invalid_part());
        }
        let range = (size > 0).then_some(0..size);
        return Ok(Plan::Range {
            etag,
            range,
            parts: None,
        });
    };
    if part > n {
        return Err(invalid_part());
    }
    let want = part as usize;
    let layouts = &req.state.part_layouts;
    let mut sizes = layouts.known(key.as_str(), &etag, want);
    if sizes.len() < want {
        let loc = req.loc();
        for i in sizes.len() + 1..=want {
            let meta = ctx.objects.origin.head_in(&loc, Some(i as u32)).await?;
            if !same_version(&meta, &etag, n) {
                return Ok(Plan::Stale);
            }
            sizes.push(meta.size);
        }
        layouts.learn(key.as_str(), &etag, sizes.clone());
    }
    match part_range(&sizes, size) {
        Some(r) => Ok(Plan::Range {
            etag,
            range: Some(r),
            parts: Some(n),
        }),
        None => Ok(Plan::Stale),
    }
}

/// GET/HEAD of part `part`, from the cache (read through on a miss) when the part's range
/// is known; from the origin when the object changed under the read twice.
pub async fn get_part(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    part: u32,
    cond: Conditions,
    overrides: Vec<(HeaderName, HeaderValue)>,
) -> Result<Response<Body>, S3Error> {
    let head = req.method == http::Method::HEAD;
    for _ in 0..2 {
        let (etag, range, parts) = match plan(ctx, req, part).await? {
            Plan::Range { etag, range, parts } => (etag, range, parts),
            Plan::Stale => continue,
        };
        let greq = GetRequest {
            key: req.cache_key(),
            head,
            range: match &range {
                Some(r) => ByteRangeSpec::From {
                    first: r.start,
                    last: Some(r.end - 1),
                },
                None => ByteRangeSpec::Whole,
            },
            cond: cond.clone(),
            fetch: true,
        };
        let render = S3Render {
            overrides: overrides.clone(),
            parts_count: parts,
        };
        let resp = crate::object::read::get(ctx, greq, render).await?;
        // The range belongs to version `etag`: an answer about another version (the object
        // changed between the two steps) is not sent.
        if resp.headers().get(header::ETAG) == Some(&quoted(&etag)) {
            return Ok(resp);
        }
    }
    Err(S3Error::service_unavailable(
        "the object changed while its part was being read; retry",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etags_name_their_part_count() {
        let md5 = "0123456789abcdef0123456789abcdef";
        assert_eq!(multipart_parts(&format!("{md5}-3")), Some(3));
        assert_eq!(multipart_parts(&format!("{md5}-10000")), Some(10_000));
        assert_eq!(multipart_parts(md5), None);
        assert_eq!(multipart_parts(&format!("{md5}-0")), None);
        assert_eq!(multipart_parts(&format!("{md5}-10001")), None);
        assert_eq!(multipart_parts(&format!("{md5}-+3")), None);
        assert_eq!(multipart_parts("xyz-3"), None);
    }

    #[test]
    fn part_ranges_follow_the_sizes() {
        assert_eq!(part_range(&[5, 3], 10), Some(5..8));
        assert_eq!(part_range(&[5], 10), Some(0..5));
        assert_eq!(part_range(&[5, 6], 10), None);
        assert_eq!(part_range(&[], 10), None);
        assert_eq!(part_range(&[u64::MAX, 1], u64::MAX), None);
    }

    #[test]
    fn layouts_are_per_version() {
        let l = Layouts::default();
        l.learn("b/k", "e1", vec![5, 5]);
        assert_eq!(l.known("b/k", "e1", 1), [5]);
        assert_eq!(l.known("b/k", "e1", 3), [5, 5]);
        assert!(l.known("b/k", "e2", 2).is_empty());
        l.learn("b/k", "e1", vec![5]);
        assert_eq!(
            l.known("b/k", "e1", 2),
            [5, 5],
            "a shorter layout does not replace"
        );
    }
}
