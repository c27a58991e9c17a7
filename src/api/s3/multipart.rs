//! Multipart uploads, passed through to the origin backends (on every backend of the
//! key's set at once: `object::upload_fanout`). A part's body is decoded, verified and
//! staged in a temp file of this shard, then uploaded from the file (with its
//! Content-MD5, so the backends verify it too). Completing an upload drops any cached
//! copy of the key, so the next read fetches the new object.

use std::fmt::Write;
use std::rc::Rc;

use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::Incoming;
use nearcache_s3::UploadsParams;

use super::error::S3Error;
use super::object::{check_copy_source, copy_source, put_meta, stage_body};
use super::xml::{escape, iso_time, url_encode, DECL, NS};
use super::{empty, ensure_bucket, read_small_body, xml_response, S3Req};
use crate::body::Body;
use crate::ctx::ShardCtx;
use crate::http_util::quoted;
use crate::object::write;
use crate::object::{upload_fanout, CacheKey};

fn upload_id(req: &S3Req) -> Result<String, S3Error> {
    req.q("uploadId")
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| S3Error::invalid_argument("uploadId is missing"))
}

pub async fn create(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    let meta = put_meta(&req.headers)?;
    ensure_bucket(ctx, req, req.bucket()).await?;
    let id = upload_fanout::create(&**ctx, &req.cache_key(), meta).await?;
    Ok(xml_response(format!(
        "{DECL}<InitiateMultipartUploadResult xmlns=\"{NS}\"><Bucket>{}</Bucket><Key>{}</Key>\
         <UploadId>{}</UploadId></InitiateMultipartUploadResult>",
        escape(req.bucket()),
        escape(req.key()),
        escape(&id)
    )))
}

/// `partNumber`: 1 to 10000.
fn part_number(req: &S3Req) -> Result<u32, S3Error> {
    req.q("partNumber")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| (1..=10_000).contains(p))
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

pub async fn upload_part(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let id = upload_id(req)?;
    let part = part_number(req)?;
    // Stage on this shard (the body is already here); the uploads run on the bridges.
    let super::object::StagedBody { staged, declared } = stage_body(ctx, req, body).await?;
    let res = upload_fanout::upload_part(&**ctx, &req.cache_key(), &id, part, &staged).await;
    staged.remove().await;
    let etag = match res {
        Ok(etag) => etag,
        Err(e) => return Err(upload_error(ctx, req, &id, e.into()).await),
    };
    let mut r = empty(StatusCode::OK);
    r.headers_mut().insert(header::ETAG, quoted(&etag));
    if let Some((name, v)) = declared {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(name, v);
        }
    }
    Ok(r)
}

pub async fn upload_part_copy(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    cred: &super::auth::Credential,
) -> Result<Response<Body>, S3Error> {
    let id = upload_id(req)?;
    let part = part_number(req)?;
    let src = copy_source(req, cred)?;
    let range = req
        .header("x-amz-copy-source-range")
        .map(parse_copy_range)
        .transpose()?;
    let size = check_copy_source(ctx, &src).await?;
    if let Some((_, last)) = range.filter(|&(_, last)| last >= size) {
        // Nothing is copied: the part would not be the bytes asked for.
        return Err(S3Error::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            format!(
                "The requested range is not satisfiable: byte {last} of a source of {size} bytes"
            ),
        ));
    }
    write::flush_pending(ctx, CacheKey::s3(&src.bucket, &src.key)).await?;
    let res =
        match upload_fanout::upload_part_copy(&**ctx, &req.cache_key(), &id, part, &src, range)
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(upload_error(ctx, req, &id, e.into()).await),
        };
    Ok(xml_response(format!(
        "{DECL}<CopyPartResult xmlns=\"{NS}\"><LastModified>{}</LastModified><ETag>{}</ETag>\
         </CopyPartResult>",
        iso_time(res.last_modified_ms),
        escape(&format!("\"{}\"", res.etag))
    )))
}

/// `x-amz-copy-source-range`: `bytes=first-last`, inclusive, first <= last.
pub(crate) fn parse_copy_range(r: &str) -> Result<(u64, u64), S3Error> {
    let bad = || {
        S3Error::invalid_argument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last",
        )
    };
    let spec = r.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let a = digits(a).ok_or_else(bad)?;
    let b = digits(b).ok_or_else(bad)?;
    if b < a {
        return Err(bad());
    }
    Ok((a, b))
}

pub async fn complete(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let id = upload_id(req)?;
    let doc = read_small_body(req, body).await?;
    let doc = std::str::from_utf8(&doc)
        .map_err(|_| S3Error::malformed_xml("the document is not UTF-8"))?;
    let root = super::xml::parse(doc)?;
    if root.name != "CompleteMultipartUpload" {
        return Err(S3Error::malformed_xml(
            "expected a <CompleteMultipartUpload> document",
        ));
    }
    let mut parts = Vec::new();
    for p in root.children.iter().filter(|c| c.name == "Part") {
        let n = p
            .child_text("PartNumber")
            .and_then(|n| n.trim().parse::<u32>().ok())
            .ok_or_else(|| S3Error::malformed_xml("a <Part> without a valid <PartNumber>"))?;
        let etag = p
            .child_text("ETag")
            .ok_or_else(|| S3Error::malformed_xml("a <Part> without <ETag>"))?
            .trim()
            .trim_matches('"')
            .to_owned();
        parts.push((n, etag));
    }
    if parts.is_empty() {
        return Err(S3Error::malformed_xml(
            "The XML you provided was not well-formed or did not validate against our published schema",
        ));
    }
    if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidPartOrder",
            "The list of parts was not in ascending order. Parts must be ordered by part number.",
        ));
    }
    let key = req.cache_key();
    // If-Match / If-None-Match: * hold against the current object, as for PutObject.
    let cond = super::object::write_condition(req)?;
    write::check_condition(ctx, key.clone(), cond).await?;
    // An older write of the key still pending upload must not land after the new object.
    write::flush_pending(ctx, key.clone()).await?;
    let etag = match upload_fanout::complete(ctx, key, &id, parts).await {
        Ok(etag) => etag,
        Err(e) => return Err(upload_error(ctx, req, &id, e.into()).await),
    };
    Ok(xml_response(format!(
        "{DECL}<CompleteMultipartUploadResult xmlns=\"{NS}\"><Location>/{}/{}</Location>\
         <Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
        escape(&url_encode(req.bucket())),
        escape(&url_encode(req.key())),
        escape(req.bucket()),
        escape(req.key()),
        escape(&format!("\"{etag}\""))
    )))
}

/// A failed call on an upload (UploadPart, UploadPartCopy, Complete): if the backend
/// answered with a server error (moto answers an unknown upload id so), an upload it does
/// not list is S3's 404 NoSuchUpload.
async fn upload_error(ctx: &ShardCtx, req: &S3Req, id: &str, e: S3Error) -> S3Error {
    if !e.status.is_server_error() {
        return e;
    }
    match upload_fanout::is_listed(ctx, &req.cache_key(), id).await {
        Some(false) => S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            format!(
                "The specified multipart upload does not exist. The upload ID may be invalid, \
                 or the upload may have been aborted or completed: {id}"
            ),
        ),
        _ => e,
    }
}

pub async fn abort(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    let id = upload_id(req)?;
    upload_fanout::abort(&**ctx, &req.cache_key(), &id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn list_parts(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    let id = upload_id(req)?;
    let max = match req.q("max-parts") {
        None => 1000,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| S3Error::invalid_argument("max-parts must be an integer"))?
            .min(1000),
    };
    let marker = match req.q("part-number-marker") {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<u32>()
                .map_err(|_| S3Error::invalid_argument("part-number-marker must be an integer"))?,
        ),
    };
    let page = upload_fanout::list_parts(&**ctx, &req.cache_key(), &id, max, marker).await?;
    let mut doc = format!(
        "{DECL}<ListPartsResult xmlns=\"{NS}\"><Bucket>{}</Bucket><Key>{}</Key>\
         <UploadId>{}</UploadId><PartNumberMarker>{}</PartNumberMarker>",
        escape(req.bucket()),
        escape(req.key()),
        escape(&id),
        marker.unwrap_or(0)
    );
    if let Some(n) = page.next_marker {
        let _ = write!(doc, "<NextPartNumberMarker>{n}</NextPartNumberMarker>");
    }
    let _ = write!(
        doc,
        "<MaxParts>{max}</MaxParts><IsTruncated>{}</IsTruncated><StorageClass>STANDARD</StorageClass>",
        page.is_truncated
    );
    for p in &page.parts {
        let _ = write!(
            doc,
            "<Part><PartNumber>{}</PartNumber><LastModified>{}</LastModified><ETag>{}</ETag>\
             <Size>{}</Size></Part>",
            p.part_number,
            iso_time(p.last_modified_ms),
            escape(&format!("\"{}\"", p.etag)),
            p.size
        );
    }
    doc.push_str("</ListPartsResult>");
    Ok(xml_response(doc))
}

pub async fn list_uploads(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    let max = match req.q("max-uploads") {
        None => 1000,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| S3Error::invalid_argument("max-uploads must be an integer"))?
            .min(1000),
    };
    let url = req.q("encoding-type") == Some("url");
    let params = UploadsParams {
        prefix: req.q("prefix").unwrap_or_default().to_owned(),
        delimiter: req
            .q("delimiter")
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
        key_marker: req
            .q("key-marker")
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
        upload_id_marker: req
            .q("upload-id-marker")
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
        max_uploads: max,
    };
    let page = ctx
        .objects
        .origin
        .list_uploads(req.bucket(), params.clone())
        .await?;
    let enc = |s: &str| {
        if url {
            escape(&url_encode(s))
        } else {
            escape(s)
        }
    };
    let mut doc = format!(
        "{DECL}<ListMultipartUploadsResult xmlns=\"{NS}\"><Bucket>{}</Bucket>\
         <KeyMarker>{}</KeyMarker><UploadIdMarker>{}</UploadIdMarker>",
        escape(req.bucket()),
        enc(params.key_marker.as_deref().unwrap_or_default()),
        escape(params.upload_id_marker.as_deref().unwrap_or_default()),
    );
    if let Some(k) = &page.next_key_marker {
        let _ = write!(doc, "<NextKeyMarker>{}</NextKeyMarker>", enc(k));
    }
    if let Some(u) = &page.next_upload_id_marker {
        let _ = write!(
            doc,
            "<NextUploadIdMarker>{}</NextUploadIdMarker>",
            escape(u)
        );
    }
    let _ = write!(
        doc,
        "<Prefix>{}</Prefix><MaxUploads>{max}</MaxUploads><IsTruncated>{}</IsTruncated>",
        enc(&params.prefix),
        page.is_truncated
    );
    if let Some(d) = &params.delimiter {
        let _ = write!(doc, "<Delimiter>{}</Delimiter>", enc(d));
    }
    if url {
        doc.push_str("<EncodingType>url</EncodingType>");
    }
    for u in &page.uploads {
        let _ = write!(
            doc,
            "<Upload><Key>{}</Key><UploadId>{}</UploadId><Initiated>{}</Initiated>\
             <StorageClass>STANDARD</StorageClass></Upload>",
            enc(&u.key),
            escape(&u.upload_id),
            iso_time(u.initiated_ms)
        );
    }
    for p in &page.common_prefixes {
        let _ = write!(
            doc,
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            enc(p)
        );
    }
    doc.push_str("</ListMultipartUploadsResult>");
    Ok(xml_response(doc))
}
