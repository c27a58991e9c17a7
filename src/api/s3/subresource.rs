//! Bucket and object sub-resources that tools read before they act (cleanup tools and test
//! harnesses call them before deleting a bucket), answered as S3 answers for what nearcache
//! serves: an unversioned bucket, the owner's full control (plus everyone's read for a
//! `public_read` bucket), no lifecycle, policy, CORS or website configuration. Object tags
//! are the origin's: read and written there.

use std::fmt::Write;
use std::rc::Rc;

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::error::S3Error;
use super::xml::{escape, DECL, NS};
use super::{empty, ensure_bucket, read_small_body, xml_response, S3Req, MISSING_CONFIGS};
use crate::body::Body;
use crate::ctx::ShardCtx;
use crate::object::{write, ObjectError};

/// The owner every listing and ACL names.
const OWNER: &str = "<ID>nearcache</ID><DisplayName>nearcache</DisplayName>";

/// S3 allows at most 10 tags per object.
const MAX_TAGS: usize = 10;

/// GetBucketVersioning: never enabled, so the configuration is empty (S3's answer for a
/// bucket whose versioning was never set).
pub async fn bucket_versioning(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    ensure_bucket(ctx, req, req.bucket()).await?;
    Ok(xml_response(format!(
        "{DECL}<VersioningConfiguration xmlns=\"{NS}\"/>"
    )))
}

/// The ACL document: the owner has FULL_CONTROL; a public-read bucket adds READ for the
/// AllUsers group.
fn acl_document(public: bool) -> String {
    let mut doc = format!(
        "{DECL}<AccessControlPolicy xmlns=\"{NS}\"><Owner>{OWNER}</Owner><AccessControlList>\
         <Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:type=\"CanonicalUser\">{OWNER}</Grantee><Permission>FULL_CONTROL</Permission></Grant>"
    );
    if public {
        doc.push_str(
            "<Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
             xsi:type=\"Group\"><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI>\
             </Grantee><Permission>READ</Permission></Grant>",
        );
    }
    doc.push_str("</AccessControlList></AccessControlPolicy>");
    doc
}

pub async fn bucket_acl(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    ensure_bucket(ctx, req, req.bucket()).await?;
    Ok(xml_response(acl_document(
        req.state.public_read(req.bucket()),
    )))
}

/// GetObjectAcl: the object must exist (cached or in the origin).
pub async fn object_acl(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    ensure_bucket(ctx, req, req.bucket()).await?;
    exists(ctx, req).await?;
    Ok(xml_response(acl_document(
        req.state.public_read(req.bucket()),
    )))
}

/// Fails with NoSuchKey unless the addressed object exists.
async fn exists(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<(), S3Error> {
    if !req.cache_key().fits_store() {
        ctx.objects.origin.head_in(&req.loc(), None).await?;
        return Ok(());
    }
    crate::object::read::stat(ctx, req.cache_key(), true).await?;
    Ok(())
}

/// A bucket configuration nearcache never has: S3's 404 for a bucket without one.
pub async fn missing_config(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    sub: &str,
) -> Result<Response<Body>, S3Error> {
    ensure_bucket(ctx, req, req.bucket()).await?;
    let (_, code, message) = MISSING_CONFIGS
        .iter()
        .find(|(s, ..)| *s == sub)
        .copied()
        .unwrap_or((sub, "NotImplemented", "not implemented"));
    Err(S3Error::new(StatusCode::NOT_FOUND, code, message))
}

/// Tags live in the origin: a write of the key still pending upload is flushed first (so the
/// origin has the object), and a key deleted through nearcache has no tags to read.
async fn in_origin(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<(), S3Error> {
    ensure_bucket(ctx, req, req.bucket()).await?;
    let key = req.cache_key();
    if write::is_deleted(ctx, key.clone()).await? {
        return Err(S3Error::no_such_key());
    }
    write::flush_pending(ctx, key).await?;
    Ok(())
}

pub async fn get_tagging(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    in_origin(ctx, req).await?;
    let tags = ctx
        .objects
        .origin
        .get_tagging(&req.loc())
        .await
        .map_err(object_error)?;
    let mut doc = format!("{DECL}<Tagging xmlns=\"{NS}\"><TagSet>");
    for (k, v) in &tags {
        let _ = write!(
            doc,
            "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
            escape(k),
            escape(v)
        );
    }
    doc.push_str("</TagSet></Tagging>");
    Ok(xml_response(doc))
}

pub async fn put_tagging(
    ctx: &Rc<ShardCtx>,
    req: &S3Req,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let doc = read_small_body(req, body).await?;
    let tags = parse_tagging(&doc)?;
    in_origin(ctx, req).await?;
    ctx.objects
        .origin
        .put_tagging(&req.loc(), tags)
        .await
        .map_err(object_error)?;
    Ok(empty(StatusCode::OK))
}

pub async fn delete_tagging(ctx: &Rc<ShardCtx>, req: &S3Req) -> Result<Response<Body>, S3Error> {
    in_origin(ctx, req).await?;
    ctx.objects
        .origin
        .delete_tagging(&req.loc())
        .await
        .map_err(object_error)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// A missing object is NoSuchKey (the bucket-aware calls pass other answers through).
fn object_error(e: nearcache_s3::OriginError) -> S3Error {
    match e {
        nearcache_s3::OriginError::NotFound => S3Error::no_such_key(),
        e => S3Error::from(ObjectError::from(e)),
    }
}

/// The `<Tagging><TagSet><Tag><Key/><Value/></Tag>...` document of PutObjectTagging:
/// at most 10 tags, keys unique, keys up to 128 and values up to 256 characters.
pub(crate) fn parse_tagging(doc: &[u8]) -> Result<Vec<(String, String)>, S3Error> {
    let doc = std::str::from_utf8(doc)
        .map_err(|_| S3Error::malformed_xml("the document is not UTF-8"))?;
    let root = super::xml::parse(doc)?;
    if root.name != "Tagging" {
        return Err(S3Error::malformed_xml("expected a <Tagging> document"));
    }
    let set = root
        .children
        .iter()
        .find(|c| c.name == "TagSet")
        .ok_or_else(|| S3Error::malformed_xml("a <Tagging> without <TagSet>"))?;
    let mut tags: Vec<(String, String)> = Vec::new();
    for t in set.children.iter().filter(|c| c.name == "Tag") {
        let k = t
            .child_text("Key")
            .ok_or_else(|| S3Error::malformed_xml("a <Tag> without <Key>"))?;
        let v = t.child_text("Value").unwrap_or_default();
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidTag",
                "A tag key must be 1 to 128 characters and a value at most 256",
            ));
        }
        if tags.iter().any(|(have, _)| have == k) {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidTag",
                "Cannot provide multiple Tags with the same key",
            ));
        }
        tags.push((k.to_owned(), v.to_owned()));
    }
    if tags.len() > MAX_TAGS {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Object tags cannot be greater than 10",
        ));
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_sets_parse_and_limits_hold() {
        let doc = b"<Tagging><TagSet><Tag><Key>a</Key><Value>1</Value></Tag>\
            <Tag><Key>b &amp; c</Key><Value></Value></Tag></TagSet></Tagging>";
        assert_eq!(
            parse_tagging(doc).unwrap(),
            [("a".into(), "1".into()), ("b & c".into(), String::new())]
        );
        let dup = b"<Tagging><TagSet><Tag><Key>a</Key><Value>1</Value></Tag>\
            <Tag><Key>a</Key><Value>2</Value></Tag></TagSet></Tagging>";
        assert_eq!(parse_tagging(dup).unwrap_err().code, "InvalidTag");
        let many: String = (0..11)
            .map(|i| format!("<Tag><Key>k{i}</Key><Value>v</Value></Tag>"))
            .collect();
        let many = format!("<Tagging><TagSet>{many}</TagSet></Tagging>");
        assert_eq!(
            parse_tagging(many.as_bytes()).unwrap_err().code,
            "BadRequest"
        );
        assert_eq!(parse_tagging(b"<Other/>").unwrap_err().code, "MalformedXML");
    }

    #[test]
    fn acl_names_the_owner_and_public_readers() {
        let private = acl_document(false);
        assert!(private.contains("<Permission>FULL_CONTROL</Permission>"));
        assert!(!private.contains("AllUsers"));
        let public = acl_document(true);
        assert!(public.contains("AllUsers</URI></Grantee><Permission>READ</Permission>"));
    }
}
