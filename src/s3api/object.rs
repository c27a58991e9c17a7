//! Object operations: GetObject/HeadObject (served by the native API's GET path),
//! PutObject, DeleteObject, DeleteObjects, CopyObject.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::rc::Rc;

use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use md5::{Digest, Md5};
use nearcache_s3::{CopySource, ObjectLoc, OriginError, PutMeta, RemoteMeta, STORED_HEADERS};
use nearcache_shards::{Lookup, WriteAttrs};

use super::auth::{BodyDecoder, ChecksumCheck, Credential};
use super::error::S3Error;
use super::xml::{escape, iso_time, DECL, NS};
use super::{
    cache_key, empty, ensure_bucket, may_use, read_small_body, xml_response, S3Req, MAX_CACHE_KEY,
};
use crate::body::Body;
use crate::http_util::{http_date, resolve_range, Conditions};
use crate::native::{exec_get, quoted, wait_for_origin, GetReq};
use crate::node::ShardCtx;

/// Chunks buffered between an origin stream and the connection.
const BODY_DEPTH: usize = 4;

/// `response-*` query parameters and the header each overrides.
const OVERRIDES: [(&str, HeaderName); 6] = [
    ("response-content-type", header::CONTENT_TYPE),
    ("response-content-language", header::CONTENT_LANGUAGE),
    ("response-expires", header::EXPIRES),
    ("response-cache-control", header::CACHE_CONTROL),
    ("response-content-disposition", header::CONTENT_DISPOSITION),
    ("response-content-encoding", header::CONTENT_ENCODING),
];

fn overrides(req: &S3Req) -> Result<Vec<(HeaderName, HeaderValue)>, S3Error> {
    let mut out = Vec::new();
    for (param, name) in OVERRIDES {
        if let Some(v) = req.q(param) {
            let v = HeaderValue::from_str(v)
                .map_err(|_| S3Error::invalid_argument(format!("invalid {param}")))?;
            out.push((name, v));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// GET / HEAD

pub async fn get_object(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    let head = req.method == http::Method::HEAD;
    let key = cache_key(req.bucket(), req.key());
    let overrides = overrides(req)?;
    let range = req.header("range").map(str::to_owned);
    let part = match req.q("partNumber") {
        None => None,
        Some(p) => match p.parse::<u32>() {
            Ok(n @ 1..=10_000) => Some(n),
            _ => {
                return Err(S3Error::invalid_argument(
                    "Part number must be an integer between 1 and 10000, inclusive",
                ))
            }
        },
    };
    if part.is_some() && range.is_some() {
        return Err(S3Error::invalid_request(
            "Cannot specify both Range header and partNumber query parameter",
        ));
    }
    let cond = Conditions::from_headers(&req.headers);
    if part.is_some() || key.len() > MAX_CACHE_KEY {
        // Parts (and keys too long for the store) are served from the origin, uncached;
        // a write still pending upload is flushed first so the origin has it.
        flush_pending(ctx, key).await?;
        return passthrough_get(ctx, req.loc(), head, range, part, cond, overrides).await;
    }
    let greq = GetReq {
        key: key.clone(),
        loc: Some(req.loc()),
        head,
        range,
        cond,
        fetch: true,
        s3: Some(overrides),
    };
    ctx.on_owner(&key, move |ctx| exec_get(ctx, greq))
        .await?
        .map_err(S3Error::from)
}

/// A GET/HEAD answered straight from the origin.
async fn passthrough_get(
    ctx: &ShardCtx,
    loc: ObjectLoc,
    head: bool,
    range: Option<String>,
    part: Option<u32>,
    cond: Conditions,
    overrides: Vec<(HeaderName, HeaderValue)>,
) -> Result<Response<Body>, S3Error> {
    let bridge = &ctx.node.bridge;
    let meta = bridge.head_in(&loc, part).await?;
    let builder = |meta: &RemoteMeta| {
        let mut b = Response::builder()
            .header(header::ETAG, quoted(&meta.etag))
            .header(header::LAST_MODIFIED, http_date(meta.last_modified_ms))
            .header(header::ACCEPT_RANGES, "bytes")
            .header(
                header::CONTENT_TYPE,
                meta.content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream"),
            );
        for (k, v) in &meta.user_meta {
            if let Ok(v) = HeaderValue::from_str(v) {
                b = b.header(format!("x-amz-meta-{k}"), v);
            }
        }
        for (k, v) in &meta.headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                b = b.header(k.as_str(), v);
            }
        }
        if let Some(n) = meta.parts_count {
            b = b.header("x-amz-mp-parts-count", n);
        }
        if let Some(h) = b.headers_mut() {
            for (k, v) in &overrides {
                h.insert(k.clone(), v.clone());
            }
        }
        b
    };
    if let Some(status) = cond.evaluate(&meta.etag, meta.last_modified_ms, true) {
        if status == StatusCode::NOT_MODIFIED {
            return Ok(builder(&meta)
                .status(status)
                .body(Body::Empty)
                .expect("valid response"));
        }
        return Err(S3Error::precondition_failed());
    }
    // The whole object's size is known once the GET answers (a part's HEAD gives the
    // part's length), so ranges resolve against what the HEAD said.
    let r = match part {
        Some(_) => None,
        None => resolve_range(range.as_deref(), meta.size).map_err(S3Error::from)?,
    };
    if head && part.is_none() {
        let len = r.as_ref().map_or(meta.size, |r| r.end - r.start);
        let mut b = builder(&meta).header(header::CONTENT_LENGTH, len);
        b = match &r {
            Some(r) => b.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", r.start, r.end - 1, meta.size),
            ),
            None => b.status(StatusCode::OK),
        };
        return Ok(b.body(Body::Empty).expect("valid response"));
    }
    let obj = bridge
        .get_in(&loc, r.clone().map(|r| (r.start, r.end)), part)
        .await?;
    let (a, e) = obj.range;
    let partial = part.is_some() || r.is_some();
    let mut b = builder(&obj.meta).header(header::CONTENT_LENGTH, e - a);
    b = if partial {
        b.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", a, e.saturating_sub(1), obj.meta.size),
        )
    } else {
        b.status(StatusCode::OK)
    };
    if head || e == a {
        return Ok(b.body(Body::Empty).expect("valid response"));
    }
    let (tx, body) = Body::channel(e - a, BODY_DEPTH);
    let mut stream = obj.body;
    monoio::spawn(async move {
        while let Some(chunk) = stream.next_chunk().await {
            let item =
                chunk.map_err(|e| crate::body::BodyError(format!("origin stream broke: {e}")));
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    Ok(b.body(body).expect("valid response"))
}

// ---------------------------------------------------------------------------------------
// PUT

/// Content-Type, x-amz-meta-* and the other stored headers of a write request.
pub(crate) fn put_meta(h: &HeaderMap) -> Result<PutMeta, S3Error> {
    let content_type = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let mut user_meta = BTreeMap::new();
    let mut size = 0;
    for (name, value) in h {
        if let Some(k) = name.as_str().strip_prefix("x-amz-meta-") {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            size += k.len() + v.len();
            user_meta.insert(k.to_owned(), v);
        }
    }
    if size > 2048 {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "MetadataTooLarge",
            "Your metadata headers exceed the maximum allowed metadata size (2 KB)",
        ));
    }
    let headers = STORED_HEADERS
        .iter()
        .filter_map(|n| {
            let v = h.get(*n)?.to_str().ok()?;
            Some(((*n).to_owned(), v.to_owned()))
        })
        .collect();
    Ok(PutMeta {
        content_type,
        user_meta,
        md5_hex: None,
        headers,
    })
}

/// If-None-Match: * and If-Match on a write.
#[derive(Clone, Default)]
struct WriteConditions {
    if_none_match: Option<String>,
    if_match: Option<String>,
}

impl WriteConditions {
    fn from_headers(req: &S3Req) -> Result<WriteConditions, S3Error> {
        let c = WriteConditions {
            if_none_match: req.header("if-none-match").map(str::to_owned),
            if_match: req.header("if-match").map(str::to_owned),
        };
        if c.if_none_match.as_deref().is_some_and(|v| v.trim() != "*") {
            return Err(S3Error::not_implemented(
                "If-None-Match on a write other than '*'",
            ));
        }
        Ok(c)
    }

    fn is_empty(&self) -> bool {
        self.if_none_match.is_none() && self.if_match.is_none()
    }

    /// Checks against the cached version, else the origin's. Runs on the owner shard.
    async fn check(&self, ctx: &ShardCtx, key: &str, loc: &ObjectLoc) -> Result<(), S3Error> {
        if self.is_empty() {
            return Ok(());
        }
        let current = match ctx.shard.peek(key) {
            Lookup::Hit { meta, .. } => Some(meta.etag.clone()),
            Lookup::Deleted(_) => None,
            Lookup::Miss => match ctx.node.bridge.head_in(loc, None).await {
                Ok(m) => Some(m.etag),
                Err(OriginError::NotFound) => None,
                Err(e) => return Err(e.into()),
            },
        };
        if self.if_none_match.is_some() && current.is_some() {
            return Err(S3Error::precondition_failed());
        }
        if let Some(im) = &self.if_match {
            let Some(etag) = current else {
                return Err(S3Error::no_such_key());
            };
            let ok = im
                .split(',')
                .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
                .any(|t| t == "*" || t == etag);
            if !ok {
                return Err(S3Error::precondition_failed());
            }
        }
        Ok(())
    }
}

struct PutObj {
    key: String,
    loc: ObjectLoc,
    decoder: BodyDecoder,
    checks: ChecksumCheck,
    decoded_len: Option<u64>,
    attrs: WriteAttrs,
    write_behind: bool,
    cond: WriteConditions,
    max_size: u64,
}

pub async fn put_object(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let meta = put_meta(&req.headers)?;
    let max_size = ctx.node.cfg.api.max_object_size.0;
    let decoded_len = req.decoded_len()?;
    if decoded_len.is_some_and(|l| l > max_size) {
        return Err(entity_too_large(max_size));
    }
    let cond = WriteConditions::from_headers(req)?;
    let key = cache_key(req.bucket(), req.key());
    ensure_bucket(ctx, req.bucket()).await?;
    if key.len() > MAX_CACHE_KEY {
        return put_uncached(ctx, req, body, meta, cond).await;
    }
    let (decoder, checks) = req.body_checks()?;
    let p = PutObj {
        key: key.clone(),
        loc: req.loc(),
        decoder,
        checks,
        decoded_len,
        attrs: WriteAttrs {
            content_type: meta.content_type,
            name: None,
            user_meta: meta.user_meta,
            level: 1,
            fetched: None,
            headers: meta.headers,
        },
        write_behind: ctx.node.s3.write_behind(req.bucket()),
        cond,
        max_size,
    };
    ctx.on_owner(&key, move |ctx| exec_put(ctx, p, body))
        .await?
}

fn entity_too_large(max: u64) -> S3Error {
    S3Error::new(
        StatusCode::BAD_REQUEST,
        "EntityTooLarge",
        format!("Your proposed upload exceeds the maximum allowed size ({max} bytes)"),
    )
}

fn incomplete(msg: String) -> S3Error {
    S3Error::new(StatusCode::BAD_REQUEST, "IncompleteBody", msg)
}

async fn exec_put(
    ctx: Rc<ShardCtx>,
    mut p: PutObj,
    mut body: Incoming,
) -> Result<Response<Body>, S3Error> {
    p.cond.check(&ctx, &p.key, &p.loc).await?;
    let mut writer = ctx.shard.begin_write(&p.key, p.decoded_len).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            incomplete(format!(
                "the request body failed after {} bytes: {e}",
                writer.written()
            ))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for chunk in p.decoder.feed(data)? {
            if writer.written() + chunk.len() as u64 > p.max_size {
                return Err(entity_too_large(p.max_size));
            }
            p.checks.update(&chunk);
            writer.write(chunk).await?;
        }
    }
    let trailer = p.decoder.finish_checksum()?;
    if let Some(len) = p.decoded_len.filter(|&l| l != writer.written()) {
        return Err(incomplete(format!(
            "You did not provide the number of bytes specified by the Content-Length HTTP \
             header: received {} of {len}",
            writer.written()
        )));
    }
    let declared = p
        .checks
        .checksum()
        .map(|(alg, v)| (alg.header_name(), v.to_owned()))
        .or_else(|| trailer.map(|(alg, v)| (alg.header_name(), v)));
    p.checks.finish()?;
    let meta = writer.finish(p.attrs).await?;
    if let Some(cl) = ctx.node.cluster.clone() {
        crate::cluster::route::replicate_put(&ctx, &cl, meta.clone()).await?;
    }
    if !p.write_behind {
        wait_for_origin(&ctx, &meta.key, meta.seq).await?;
    }
    let mut r = empty(StatusCode::OK);
    r.headers_mut().insert(header::ETAG, quoted(&meta.etag));
    if let Some((name, v)) = declared {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(name, v);
        }
    }
    Ok(r)
}

/// A decoded request body staged in a file (multipart parts, uncached writes).
pub(crate) struct Staged {
    pub path: PathBuf,
    pub len: u64,
    pub md5_hex: String,
    /// The declared checksum header and value, echoed in the answer.
    pub declared: Option<(&'static str, String)>,
}

impl Staged {
    pub async fn remove(self) {
        // A metadata-only syscall, like the store's own unlinks of abandoned writes.
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "removing a staged body");
        }
    }
}

/// Writes the decoded, verified body to a temp file in this shard's directory.
pub(crate) async fn stage_body(
    ctx: &ShardCtx,
    req: &S3Req,
    mut body: Incoming,
) -> Result<Staged, S3Error> {
    let max = ctx.node.cfg.api.max_object_size.0;
    let expected = req.decoded_len()?;
    if expected.is_some_and(|l| l > max) {
        return Err(entity_too_large(max));
    }
    let (mut decoder, mut checks) = req.body_checks()?;
    let dir = ctx
        .node
        .cfg
        .server
        .data_dir
        .join(format!("shard-{}", ctx.id))
        .join("staging");
    std::fs::create_dir_all(&dir)
        .map_err(|e| S3Error::internal(format!("creating {}: {e}", dir.display())))?;
    let path = dir.join(format!("{}.part", req.rid));
    let file = monoio::fs::File::create(&path)
        .await
        .map_err(|e| S3Error::internal(format!("creating {}: {e}", path.display())))?;
    let staged = Staged {
        path,
        len: 0,
        md5_hex: String::new(),
        declared: None,
    };
    let result = async {
        let mut md5 = Md5::new();
        let mut pos = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                incomplete(format!("the request body failed after {pos} bytes: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for chunk in decoder.feed(data)? {
                if pos + chunk.len() as u64 > max {
                    return Err(entity_too_large(max));
                }
                checks.update(&chunk);
                md5.update(&chunk);
                let n = chunk.len() as u64;
                let (res, _) = file.write_all_at(chunk, pos).await;
                res.map_err(|e| S3Error::internal(format!("staging the body: {e}")))?;
                pos += n;
            }
        }
        let trailer = decoder.finish_checksum()?;
        if let Some(len) = expected.filter(|&l| l != pos) {
            return Err(incomplete(format!(
                "You did not provide the number of bytes specified by the Content-Length \
                 HTTP header: received {pos} of {len}"
            )));
        }
        let declared = checks
            .checksum()
            .map(|(alg, v)| (alg.header_name(), v.to_owned()))
            .or_else(|| trailer.map(|(alg, v)| (alg.header_name(), v)));
        checks.finish()?;
        Ok::<_, S3Error>((pos, hex::encode(md5.finalize()), declared))
    }
    .await;
    let _ = file.close().await;
    match result {
        Ok((len, md5_hex, declared)) => Ok(Staged {
            len,
            md5_hex,
            declared,
            ..staged
        }),
        Err(e) => {
            staged.remove().await;
            Err(e)
        }
    }
}

/// PutObject for a key too long for the store: staged, uploaded, never cached.
async fn put_uncached(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    body: Incoming,
    mut meta: PutMeta,
    cond: WriteConditions,
) -> Result<Response<Body>, S3Error> {
    let key = cache_key(req.bucket(), req.key());
    cond.check(ctx, &key, &req.loc()).await?;
    let staged = stage_body(ctx, req, body).await?;
    meta.md5_hex = Some(staged.md5_hex.clone());
    let res = ctx
        .node
        .bridge
        .put_file_in(&req.loc(), staged.path.clone(), 0, staged.len, meta)
        .await;
    let declared = staged.declared.clone();
    staged.remove().await;
    let put = res?;
    let mut r = empty(StatusCode::OK);
    r.headers_mut().insert(header::ETAG, quoted(&put.etag));
    if let Some((name, v)) = declared {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(name, v);
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// DELETE

pub async fn delete_object(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    ensure_bucket(ctx, req.bucket()).await?;
    delete_one(ctx, req.loc()).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Tombstone plus origin delete (answered after the origin unless the bucket is
/// write-behind).
async fn delete_one(ctx: &Rc<ShardCtx>, loc: ObjectLoc) -> Result<(), S3Error> {
    let key = cache_key(&loc.bucket, &loc.key);
    if key.len() > MAX_CACHE_KEY {
        return ctx.node.bridge.delete_in(&loc).await.map_err(S3Error::from);
    }
    let write_behind = ctx.node.s3.write_behind(&loc.bucket);
    ctx.on_owner(&key.clone(), move |ctx| async move {
        let t = ctx.shard.delete(&key, 1).await?;
        if let Some(cl) = ctx.node.cluster.clone() {
            crate::cluster::route::replicate_delete(&cl, t.clone()).await?;
        }
        if !write_behind {
            wait_for_origin(&ctx, &key, t.seq).await?;
        }
        Ok::<_, S3Error>(())
    })
    .await?
}

pub async fn delete_objects(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let doc = read_small_body(req, body).await?;
    let doc = std::str::from_utf8(&doc)
        .map_err(|_| S3Error::malformed_xml("the document is not UTF-8"))?;
    let root = super::xml::parse(doc)?;
    if root.name != "Delete" {
        return Err(S3Error::malformed_xml("expected a <Delete> document"));
    }
    let quiet = root
        .child_text("Quiet")
        .is_some_and(|q| q.trim().eq_ignore_ascii_case("true"));
    let keys: Vec<String> = root
        .children
        .iter()
        .filter(|c| c.name == "Object")
        .map(|c| {
            c.child_text("Key")
                .map(str::to_owned)
                .ok_or_else(|| S3Error::malformed_xml("an <Object> without <Key>"))
        })
        .collect::<Result<_, _>>()?;
    if keys.is_empty() || keys.len() > 1000 {
        return Err(S3Error::malformed_xml(
            "a Delete request names between 1 and 1000 objects",
        ));
    }
    ensure_bucket(ctx, req.bucket()).await?;
    let results = futures::future::join_all(keys.iter().map(|k| {
        let loc = ObjectLoc {
            bucket: req.bucket().to_owned(),
            key: k.clone(),
        };
        delete_one(ctx, loc)
    }))
    .await;
    let mut doc = format!("{DECL}<DeleteResult xmlns=\"{NS}\">");
    for (k, r) in keys.iter().zip(results) {
        match r {
            Ok(()) if quiet => {}
            Ok(()) => {
                let _ = write!(doc, "<Deleted><Key>{}</Key></Deleted>", escape(k));
            }
            Err(e) => {
                let _ = write!(
                    doc,
                    "<Error><Key>{}</Key><Code>{}</Code><Message>{}</Message></Error>",
                    escape(k),
                    escape(&e.code),
                    escape(&e.message)
                );
            }
        }
    }
    doc.push_str("</DeleteResult>");
    Ok(xml_response(doc))
}

// ---------------------------------------------------------------------------------------
// COPY

/// Waits until a write or delete of `key` still pending upload has reached the origin.
pub(crate) async fn flush_pending(ctx: &Rc<ShardCtx>, key: String) -> Result<(), S3Error> {
    if key.len() > MAX_CACHE_KEY {
        return Ok(());
    }
    ctx.on_owner(&key.clone(), move |ctx| async move {
        match ctx.shard.pending_seq(&key) {
            Some(seq) => wait_for_origin(&ctx, &key, seq)
                .await
                .map_err(S3Error::from),
            None => Ok(()),
        }
    })
    .await?
}

/// Drops the cached copy of `key` (the origin has a newer object).
pub(crate) async fn forget(ctx: &Rc<ShardCtx>, key: String) -> Result<(), S3Error> {
    if key.len() > MAX_CACHE_KEY {
        return Ok(());
    }
    ctx.on_owner(&key.clone(), move |ctx| async move {
        ctx.shard.forget(&key).await.map_err(S3Error::from)
    })
    .await?
}

/// Parses `x-amz-copy-source` (`[/]bucket/key[?versionId=..]`, URL-encoded) and the
/// `x-amz-copy-source-if-*` conditions; checks the key may read the source bucket.
pub(crate) fn copy_source(req: &S3Req, cred: &Credential) -> Result<CopySource, S3Error> {
    let raw = req
        .header("x-amz-copy-source")
        .ok_or_else(|| S3Error::invalid_argument("x-amz-copy-source is missing"))?;
    let (path, version) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if version.is_some_and(|v| v != "versionId=null") {
        return Err(S3Error::not_implemented("copying an object version"));
    }
    let decoded = percent_encoding::percent_decode_str(path.trim_start_matches('/'))
        .decode_utf8()
        .map_err(|_| S3Error::invalid_argument("x-amz-copy-source is not valid UTF-8"))?;
    let (bucket, key) = decoded
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            )
        })?;
    if !may_use(cred, bucket) {
        return Err(S3Error::access_denied(format!(
            "access key {} may not read bucket {bucket}",
            cred.access_key
        )));
    }
    let conditions = [
        "x-amz-copy-source-if-match",
        "x-amz-copy-source-if-none-match",
        "x-amz-copy-source-if-modified-since",
        "x-amz-copy-source-if-unmodified-since",
    ]
    .iter()
    .filter_map(|n| Some(((*n).to_owned(), req.header(n)?.to_owned())))
    .collect();
    Ok(CopySource {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        conditions,
    })
}

pub async fn copy_object(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    cred: &Credential,
) -> Result<Response<Body>, S3Error> {
    let src = copy_source(req, cred)?;
    let replace = match req
        .header("x-amz-metadata-directive")
        .unwrap_or("COPY")
        .to_ascii_uppercase()
        .as_str()
    {
        "COPY" => false,
        "REPLACE" => true,
        other => {
            return Err(S3Error::invalid_argument(format!(
                "Unknown metadata directive {other:?}"
            )))
        }
    };
    let meta = if replace {
        Some(put_meta(&req.headers)?)
    } else {
        None
    };
    let src_key = cache_key(&src.bucket, &src.key);
    let dst_key = cache_key(req.bucket(), req.key());
    // The copy happens in the origin: it must have the source, and no older pending write
    // of the destination may land after the copy.
    if let Lookup::Deleted(_) = peek_owner(ctx, src_key.clone()).await? {
        return Err(S3Error::no_such_key());
    }
    flush_pending(ctx, src_key).await?;
    flush_pending(ctx, dst_key.clone()).await?;
    let res = ctx.node.bridge.copy_object(&req.loc(), src, meta).await?;
    forget(ctx, dst_key).await?;
    Ok(xml_response(format!(
        "{DECL}<CopyObjectResult xmlns=\"{NS}\"><LastModified>{}</LastModified>\
         <ETag>{}</ETag></CopyObjectResult>",
        iso_time(res.last_modified_ms),
        escape(&format!("\"{}\"", res.etag))
    )))
}

/// The owner shard's view of `key` (no counting, no body).
async fn peek_owner(ctx: &Rc<ShardCtx>, key: String) -> Result<Lookup, S3Error> {
    if key.len() > MAX_CACHE_KEY {
        return Ok(Lookup::Miss);
    }
    let l = ctx
        .on_owner(&key.clone(), move |ctx| async move {
            match ctx.shard.peek(&key) {
                Lookup::Deleted(t) => Some(t),
                _ => None,
            }
        })
        .await?;
    Ok(l.map_or(Lookup::Miss, Lookup::Deleted))
}
