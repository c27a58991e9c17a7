//! Object operations: GetObject/HeadObject, PutObject, DeleteObject(s), CopyObject. The
//! object service decides; this edge parses S3's requests and renders its answers.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fmt::Write;
use std::rc::Rc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nearcache_s3::{CopySource, ObjectLoc, PutMeta, RemoteMeta, STORED_HEADERS};
use nearcache_shards::WriteAttrs;
use tokio::sync::oneshot;

use super::auth::{BodyDecoder, ChecksumCheck, Credential};
use super::error::S3Error;
use super::render::S3Render;
use super::xml::{escape, iso_time, DECL, NS};
use super::{empty, ensure_bucket, may_use, read_small_body, xml_response, S3Req};
use crate::body::Body;
use crate::ctx::ShardCtx;
use crate::http_util::{
    http_date, parse_byte_range, quoted, resolve_range, ByteRangeSpec, Conditions,
};
use crate::object::read::{GetRequest, Stat};
use crate::object::write::{self, DeleteRequest, PutRequest, WriteCondition, WriteError};
use crate::object::{CacheKey, ObjectError};

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
    if req.query.is_empty() {
        return Ok(out);
    }
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
    let key = req.cache_key();
    let overrides = overrides(req)?;
    let range_header = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let part = req
        .q("partNumber")
        .map(super::part::parse_part_number)
        .transpose()?;
    if part.is_some() && range_header.is_some() {
        return Err(S3Error::invalid_request(
            "Cannot specify both Range header and partNumber query parameter",
        ));
    }
    let range = parse_byte_range(range_header);
    let cond = Conditions::from_headers(&req.headers);
    if !key.fits_store() {
        // Keys too long for the store are served from the origin, uncached.
        return Box::pin(passthrough_get(
            ctx,
            req.loc(),
            head,
            range,
            part,
            cond,
            overrides,
        ))
        .await;
    }
    if let Some(part) = part {
        // In a cluster a part is served by the key's first owner (which knows the copy).
        if let (false, Some(cs)) = (req.forwarded, ctx.cluster.clone()) {
            use crate::cluster::route::{proxy_read, read_plan, ReadPlan};
            if let ReadPlan::IfHeld { .. } = read_plan(&cs, key.as_str()) {
                if let Some(resp) = Box::pin(proxy_read(&cs, key.as_str(), proxy_head(req)))
                    .await
                    .map_err(ObjectError::from)?
                {
                    return Ok(resp);
                }
            }
        }
        return Box::pin(super::part::get_part(ctx, req, part, cond, overrides)).await;
    }
    let greq = |key: CacheKey| GetRequest {
        key,
        head,
        range,
        cond: cond.clone(),
        fetch: true,
    };
    if let (false, Some(cs)) = (req.forwarded, ctx.cluster.clone()) {
        use crate::cluster::route::{proxy_read, read_plan, ReadPlan};
        if let ReadPlan::IfHeld { owner_here } = read_plan(&cs, key.as_str()) {
            let render = S3Render {
                overrides: overrides.clone(),
                parts_count: None,
            };
            let held = crate::object::read::get_held(ctx, greq(key.clone()), render, owner_here);
            if let Some(resp) = held.await? {
                return Ok(resp);
            }
            let proxied = Box::pin(proxy_read(&cs, key.as_str(), proxy_head(req)))
                .await
                .map_err(ObjectError::from)?;
            if let Some(resp) = proxied {
                return Ok(resp);
            }
            // Every better-ranked node is unreachable: served (read through) here.
        }
    }
    let render = S3Render {
        overrides,
        parts_count: None,
    };
    Ok(crate::object::read::get(ctx, greq(key), render).await?)
}

/// The request head a read is proxied to another node with.
fn proxy_head(req: &S3Req) -> http::request::Parts {
    let mut head = Request::builder()
        .method(req.method.clone())
        .uri(req.uri.clone())
        .body(())
        .expect("a valid request head")
        .into_parts()
        .0;
    head.headers = req.headers.clone();
    head.headers
        .insert(crate::cluster::H_API, HeaderValue::from_static("s3"));
    head
}

/// A GET/HEAD answered straight from the origin.
async fn passthrough_get(
    ctx: &ShardCtx,
    loc: ObjectLoc,
    head: bool,
    range: ByteRangeSpec,
    part: Option<u32>,
    cond: Conditions,
    overrides: Vec<(HeaderName, HeaderValue)>,
) -> Result<Response<Body>, S3Error> {
    let bridge = &ctx.objects.origin;
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
        None => resolve_range(range, meta.size)
            .map_err(|_| S3Error::from(ObjectError::RangeNotSatisfiable { size: meta.size }))?,
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
    let body = crate::body::pump(e - a, None, obj.body, "the origin stream");
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
            let v = if *n == "content-encoding" {
                stored_encoding(v)?
            } else {
                v.to_owned()
            };
            Some(((*n).to_owned(), v))
        })
        .collect();
    Ok(PutMeta {
        content_type,
        user_meta,
        md5_hex: None,
        headers,
    })
}

/// The Content-Encoding stored with an object: `aws-chunked` describes how the request body
/// was framed, not the object, so S3 drops it (`gzip, aws-chunked` is stored as `gzip`;
/// `aws-chunked` alone stores none).
pub(crate) fn stored_encoding(v: &str) -> Option<String> {
    let chunked = |c: &str| c.trim().eq_ignore_ascii_case("aws-chunked");
    if !v.split(',').any(chunked) {
        return Some(v.to_owned());
    }
    let kept: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// If-None-Match: * and If-Match on a write.
pub(crate) fn write_condition(req: &S3Req) -> Result<WriteCondition, S3Error> {
    let if_none_match = req.header("if-none-match");
    if if_none_match.is_some_and(|v| v.trim() != "*") {
        return Err(S3Error::not_implemented(
            "If-None-Match on a write other than '*'",
        ));
    }
    Ok(WriteCondition {
        if_none_match_any: if_none_match.is_some(),
        if_match: req.header("if-match").map(str::to_owned),
    })
}

/// The checksum header the client declared (or sent in the trailer), echoed back.
pub(crate) type Declared = Option<(&'static str, String)>;

/// A request body decoded (aws-chunked) and verified (signatures, Content-MD5,
/// x-amz-checksum-*) as it streams. A failed check is the stream's last item, so the
/// object service never commits a body that did not verify. The declared checksum
/// arrives on the receiver once the body ended well.
pub(crate) fn decoded_body(
    req: &S3Req,
    body: Incoming,
) -> Result<
    (
        BoxStream<'static, Result<Bytes, S3Error>>,
        oneshot::Receiver<Declared>,
    ),
    S3Error,
> {
    let (decoder, checks) = req.body_checks()?;
    let (tx, rx) = oneshot::channel();
    struct Decoding {
        body: Incoming,
        decoder: Option<BodyDecoder>,
        checks: Option<ChecksumCheck>,
        ready: VecDeque<Bytes>,
        declared: Option<oneshot::Sender<Declared>>,
        pos: u64,
        done: bool,
    }
    let st = Decoding {
        body,
        decoder: Some(decoder),
        checks: Some(checks),
        ready: VecDeque::new(),
        declared: Some(tx),
        pos: 0,
        done: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(c) = st.ready.pop_front() {
                if let Some(checks) = st.checks.as_mut() {
                    checks.update(&c);
                }
                st.pos = st.pos.saturating_add(c.len() as u64);
                return Some((Ok(c), st));
            }
            if st.done {
                return None;
            }
            match st.body.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let fed = match st.decoder.as_mut() {
                        Some(d) => d.feed(data),
                        None => Ok(Vec::new()),
                    };
                    match fed {
                        Ok(chunks) => st.ready.extend(chunks),
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e.into()), st));
                        }
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    let msg = format!("the request body failed after {} bytes: {e}", st.pos);
                    return Some((Err(incomplete(msg)), st));
                }
                None => {
                    st.done = true;
                    match finish_checks(st.decoder.take(), st.checks.take()) {
                        Ok(declared) => {
                            if let Some(tx) = st.declared.take() {
                                let _ = tx.send(declared);
                            }
                            return None;
                        }
                        Err(e) => return Some((Err(e), st)),
                    }
                }
            }
        }
    });
    Ok((stream.boxed(), rx))
}

fn finish_checks(
    decoder: Option<BodyDecoder>,
    checks: Option<ChecksumCheck>,
) -> Result<Declared, S3Error> {
    let trailer = match decoder {
        Some(d) => d.finish_checksum()?,
        None => None,
    };
    let Some(checks) = checks else {
        return Ok(None);
    };
    let declared = checks
        .checksum()
        .map(|(alg, v)| (alg.header_name(), v.to_owned()))
        .or_else(|| trailer.map(|(alg, v)| (alg.header_name(), v)));
    checks.finish()?;
    Ok(declared)
}

fn write_error(e: WriteError<S3Error>) -> S3Error {
    match e {
        WriteError::Body { error, .. } => error,
        WriteError::Object(e) => e.into(),
    }
}

pub async fn put_object(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let meta = put_meta(&req.headers)?;
    let decoded_len = req.decoded_len()?;
    let cond = write_condition(req)?;
    ensure_bucket(ctx, req, req.bucket()).await?;
    let (stream, declared) = decoded_body(req, body)?;
    let preq = PutRequest {
        key: req.cache_key(),
        attrs: WriteAttrs {
            content_type: meta.content_type,
            name: None,
            user_meta: meta.user_meta,
            level: 1,
            fetched: None,
            headers: meta.headers,
        },
        content_length: decoded_len,
        wait_origin: !req.state.write_behind(req.bucket()),
        cond,
    };
    let w = write::put(ctx, preq, stream).await.map_err(write_error)?;
    let mut r = empty(StatusCode::OK);
    r.headers_mut().insert(header::ETAG, quoted(&w.etag));
    if let Ok(Some((name, v))) = declared.await {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(name, v);
        }
    }
    Ok(r)
}

fn incomplete(msg: String) -> S3Error {
    S3Error::new(StatusCode::BAD_REQUEST, "IncompleteBody", msg)
}

/// A decoded, verified request body staged in a file (multipart parts).
pub(crate) struct StagedBody {
    pub staged: write::Staged,
    /// The declared checksum header and value, echoed in the answer.
    pub declared: Declared,
}

/// Writes the decoded, verified body to a staging file of this shard.
pub(crate) async fn stage_body(
    ctx: &ShardCtx,
    req: &S3Req,
    body: Incoming,
) -> Result<StagedBody, S3Error> {
    let max = ctx.node.cfg.api.max_object_size.0;
    let expected = req.decoded_len()?;
    if expected.is_some_and(|l| l > max) {
        return Err(ObjectError::TooLarge {
            size: expected.unwrap_or(0),
            max,
        }
        .into());
    }
    let (stream, declared) = decoded_body(req, body)?;
    let staged = write::stage(ctx, stream, max).await.map_err(write_error)?;
    if let Some(len) = expected.filter(|&l| l != staged.len) {
        let got = staged.len;
        staged.remove().await;
        return Err(ObjectError::IncompleteBody {
            got,
            expected: format!("Content-Length is {len}"),
        }
        .into());
    }
    let declared = declared.await.unwrap_or(None);
    Ok(StagedBody { staged, declared })
}

// ---------------------------------------------------------------------------------------
// DELETE

pub async fn delete_object(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    ensure_bucket(ctx, req, req.bucket()).await?;
    let dreq = DeleteRequest {
        key: req.cache_key(),
        level: 1,
        wait_origin: !req.state.write_behind(req.bucket()),
    };
    write::delete(ctx, dreq).await?;
    Ok(empty(StatusCode::NO_CONTENT))
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
    ensure_bucket(ctx, req, req.bucket()).await?;
    let wait_origin = !req.state.write_behind(req.bucket());
    let results = futures::future::join_all(keys.iter().map(|k| {
        let dreq = DeleteRequest {
            key: CacheKey::s3(req.bucket(), k),
            level: 1,
            wait_origin,
        };
        async move { write::delete(ctx, dreq).await.map_err(S3Error::from) }
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

/// `x-amz-copy-source` parsed: `[/]bucket/key[?versionId=..]`, URL-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopySourceHeader {
    pub bucket: String,
    pub key: String,
    /// `versionId`, if given.
    pub version: Option<String>,
}

/// Parses an `x-amz-copy-source` value. The value should be URL-encoded (a literal `?` in
/// a key as `%3F`); a `?` not followed by `versionId=` is taken as part of the key, so a
/// client that did not encode one still copies the key it named. `+` is a plus sign.
pub(crate) fn parse_copy_source(raw: &str) -> Result<CopySourceHeader, S3Error> {
    let (path, version) = match raw.rsplit_once('?') {
        Some((p, q)) if q.starts_with("versionId=") => {
            (p, Some(q["versionId=".len()..].to_owned()))
        }
        _ => (raw, None),
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    let decoded = percent_encoding::percent_decode_str(path)
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
    Ok(CopySourceHeader {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        version,
    })
}

/// The `x-amz-copy-source-if-*` headers as (name, value), passed on to the origin too.
const COPY_CONDITIONS: [&str; 4] = [
    "x-amz-copy-source-if-match",
    "x-amz-copy-source-if-none-match",
    "x-amz-copy-source-if-modified-since",
    "x-amz-copy-source-if-unmodified-since",
];

/// Parses `x-amz-copy-source` and the `x-amz-copy-source-if-*` conditions; checks the key
/// may read the source bucket.
pub(crate) fn copy_source(req: &S3Req, cred: &Credential) -> Result<CopySource, S3Error> {
    let raw = req
        .header("x-amz-copy-source")
        .ok_or_else(|| S3Error::invalid_argument("x-amz-copy-source is missing"))?;
    let src = parse_copy_source(raw)?;
    if src.version.as_deref().is_some_and(|v| v != "null") {
        return Err(S3Error::not_implemented("copying an object version"));
    }
    if !may_use(cred, &src.bucket) {
        return Err(S3Error::access_denied(format!(
            "access key {} may not read bucket {}",
            cred.access_key, src.bucket
        )));
    }
    let conditions = COPY_CONDITIONS
        .iter()
        .filter_map(|n| Some(((*n).to_owned(), req.header(n)?.to_owned())))
        .collect();
    Ok(CopySource {
        bucket: src.bucket,
        key: src.key,
        conditions,
    })
}

/// The copy's `x-amz-copy-source-if-*` conditions as HTTP conditions on the source.
fn copy_conditions(src: &CopySource) -> Conditions {
    let get = |name: &str| {
        src.conditions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let date = |name: &str| get(name).and_then(|v| httpdate::parse_http_date(&v).ok());
    Conditions {
        if_match: get(COPY_CONDITIONS[0]),
        if_none_match: get(COPY_CONDITIONS[1]),
        if_modified_since: date(COPY_CONDITIONS[2]),
        if_unmodified_since: date(COPY_CONDITIONS[3]),
    }
}

/// The copy source as it is now (pending writes included, deletes through nearcache
/// honoured), checked against the copy's conditions: 412 when one fails, as S3 (the
/// origin may not check them). Returns the source's size.
pub(crate) async fn check_copy_source(
    ctx: &Rc<ShardCtx>,
    src: &CopySource,
) -> Result<u64, S3Error> {
    let key = CacheKey::s3(&src.bucket, &src.key);
    let (etag, last_modified_ms, size) = if key.fits_store() {
        match crate::object::read::stat(ctx, key, true).await? {
            Stat::Cached(m) => (m.etag, m.last_modified_ms, m.size),
            Stat::Origin(r, _) => (r.etag, r.last_modified_ms, r.size),
        }
    } else {
        let loc = ObjectLoc {
            bucket: src.bucket.clone(),
            key: src.key.clone(),
        };
        let r = ctx.objects.origin.head_in(&loc, None).await?;
        (r.etag, r.last_modified_ms, r.size)
    };
    // Copy conditions never answer 304: whatever stops a GET stops the copy with 412.
    if copy_conditions(src)
        .evaluate(&etag, last_modified_ms, true)
        .is_some()
    {
        return Err(S3Error::precondition_failed());
    }
    Ok(size)
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
    let src_key = CacheKey::s3(&src.bucket, &src.key);
    let dst_key = req.cache_key();
    // The copy happens in the origin: it must have the source, and no older pending write
    // of the destination may land after the copy.
    check_copy_source(ctx, &src).await?;
    write::flush_pending(ctx, src_key).await?;
    write::flush_pending(ctx, dst_key.clone()).await?;
    let res = crate::object::upload_fanout::copy(ctx, dst_key, src, meta).await?;
    Ok(xml_response(format!(
        "{DECL}<CopyObjectResult xmlns=\"{NS}\"><LastModified>{}</LastModified>\
         <ETag>{}</ETag></CopyObjectResult>",
        iso_time(res.last_modified_ms),
        escape(&format!("\"{}\"", res.etag))
    )))
}
