//! aws-sdk-s3 backend.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, Length};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
    EncodingType, MetadataDirective, Tag, Tagging,
};
use aws_sdk_s3::Client;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use tracing::{debug, info};

use super::{BodySource, Call, OpenedGet, Reply};
use crate::{
    BucketInfo, CopyResult, CopySource, ListEntry, ListPage, ListParams, ObjectLoc, OriginConfig,
    OriginDeadlines, OriginError, OriginKind, OriginStats, PartInfo, PartsPage, PutMeta, PutResult,
    PutSource, RemoteMeta, UploadInfo, UploadsPage, UploadsParams,
};

/// An HTTPS client (rustls on aws-lc-rs, as the default one) that trusts only the CA
/// certificates in `path` (PEM).
#[expect(
    clippy::disallowed_methods,
    reason = "once, while the bridge thread builds its client; never on a shard thread"
)]
fn client_trusting(
    path: &std::path::Path,
) -> Result<aws_sdk_s3::config::SharedHttpClient, OriginError> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let pem = std::fs::read(path).map_err(|e| {
        OriginError::Rejected(format!("reading the CA bundle {}: {e}", path.display()))
    })?;
    let ctx = TlsContext::builder()
        .with_trust_store(
            TrustStore::empty()
                .with_native_roots(false)
                .with_pem_certificate(pem),
        )
        .build()
        .map_err(|e| OriginError::Rejected(format!("CA bundle {}: {e}", path.display())))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(ctx)
        .build_https())
}

pub(crate) struct S3Origin {
    client: Client,
    bucket: String,
    region: String,
    connect_timeout: Duration,
}

impl S3Origin {
    /// Builds the client. Does not contact the origin (it may be down at start-up).
    pub async fn connect(
        cfg: &OriginConfig,
        deadlines: &OriginDeadlines,
        stats: Arc<OriginStats>,
    ) -> Result<S3Origin, OriginError> {
        let OriginKind::S3 {
            endpoint,
            region,
            bucket,
            access_key,
            secret_key,
            path_style,
        } = &cfg.kind
        else {
            return Err(OriginError::Rejected("not an S3 origin".into()));
        };
        let retry = RetryConfig::standard()
            .with_max_attempts(cfg.max_attempts.max(1))
            .with_initial_backoff(cfg.initial_backoff);
        // Per-attempt timeout only. An attempt ends when the response head has been read
        // (GetObject returns its body unread, outside the orchestrator's timeouts), so this
        // bounds time to first byte and never cuts a long download; the bridge applies an
        // idle timeout per chunk while streaming, and bounds the whole operation (all
        // attempts and backoffs) by its deadline. An attempt longer than the request
        // deadline could never succeed; operations that send a body override it.
        let attempt = if cfg.operation_timeout.is_zero() {
            deadlines.request_deadline
        } else {
            cfg.operation_timeout.min(deadlines.request_deadline)
        };
        let timeout = attempt_timeouts(cfg.connect_timeout, attempt);
        let builder = match (access_key, secret_key) {
            (Some(ak), Some(sk)) => aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .credentials_provider(Credentials::new(ak, sk, None, None, "nearcache-static")),
            _ => {
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(Region::new(region.clone()))
                    .load()
                    .await;
                aws_sdk_s3::config::Builder::from(&sdk)
            }
        };
        let mut builder = builder
            .region(Region::new(region.clone()))
            .force_path_style(*path_style)
            .retry_config(retry)
            .timeout_config(timeout)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .interceptor(RetryCounter { stats });
        if let Some(ep) = endpoint {
            builder = builder.endpoint_url(ep);
        }
        if let Some(path) = &cfg.ca_bundle {
            builder = builder.http_client(client_trusting(path)?);
        }
        Ok(S3Origin {
            client: Client::from_conf(builder.build()),
            bucket: bucket.clone(),
            region: region.clone(),
            connect_timeout: cfg.connect_timeout,
        })
    }

    /// A config override that bounds each attempt of one operation by `attempt`.
    fn attempt_override(&self, attempt: Duration) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default()
            .timeout_config(attempt_timeouts(self.connect_timeout, attempt))
    }

    fn bucket<'a>(&'a self, bucket: Option<&'a str>) -> &'a str {
        bucket.unwrap_or(&self.bucket)
    }

    pub async fn get(
        &self,
        bucket: Option<&str>,
        key: &str,
        range: Option<(u64, u64)>,
        part: Option<u32>,
        if_none_match: Option<&str>,
    ) -> Result<OpenedGet, OriginError> {
        let mut req = self
            .client
            .get_object()
            .bucket(self.bucket(bucket))
            .key(key);
        if let Some((a, b)) = range {
            if b <= a {
                return Err(OriginError::InvalidRange);
            }
            req = req.range(format!("bytes={}-{}", a, b - 1));
        }
        if let Some(p) = part {
            req = req.part_number(p as i32);
        }
        if let Some(etag) = if_none_match {
            req = req.if_none_match(format!("\"{etag}\""));
        }
        let out = req.send().await.map_err(|e| mapper(bucket)(e))?;
        let len = out.content_length().unwrap_or(0).max(0) as u64;
        let (size, got) = match out.content_range() {
            Some(cr) => parse_content_range(cr).ok_or_else(|| {
                OriginError::Rejected(format!("bad Content-Range from origin: {cr:?}"))
            })?,
            None => (len, (0, len)),
        };
        let meta = RemoteMeta {
            size,
            etag: unquote(out.e_tag()),
            content_type: out.content_type().map(str::to_owned),
            last_modified_ms: millis(out.last_modified()),
            user_meta: user_meta(out.metadata()),
            headers: stored_headers([
                ("cache-control", out.cache_control()),
                ("content-disposition", out.content_disposition()),
                ("content-encoding", out.content_encoding()),
                ("content-language", out.content_language()),
                ("expires", out.expires_string()),
            ]),
            parts_count: out.parts_count().map(|n| n.max(0) as u32),
        };
        Ok(OpenedGet {
            meta,
            range: got,
            body: BodySource::S3(out.body),
        })
    }

    pub async fn head(
        &self,
        bucket: Option<&str>,
        key: &str,
        part: Option<u32>,
    ) -> Result<RemoteMeta, OriginError> {
        let mut req = self
            .client
            .head_object()
            .bucket(self.bucket(bucket))
            .key(key);
        if let Some(p) = part {
            req = req.part_number(p as i32);
        }
        let out = req.send().await.map_err(|e| mapper(bucket)(e))?;
        Ok(RemoteMeta {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: unquote(out.e_tag()),
            content_type: out.content_type().map(str::to_owned),
            last_modified_ms: millis(out.last_modified()),
            user_meta: user_meta(out.metadata()),
            headers: stored_headers([
                ("cache-control", out.cache_control()),
                ("content-disposition", out.content_disposition()),
                ("content-encoding", out.content_encoding()),
                ("content-language", out.content_language()),
                ("expires", out.expires_string()),
            ]),
            parts_count: out.parts_count().map(|n| n.max(0) as u32),
        })
    }

    /// PUT `src` to `key`. `attempt`: a per-attempt bound replacing the client's.
    pub async fn put_file(
        &self,
        bucket: Option<&str>,
        key: &str,
        src: &PutSource,
        meta: &PutMeta,
        attempt: Option<Duration>,
    ) -> Result<PutResult, OriginError> {
        let body = upload_body(src, "upload").await?;
        let mut req = self
            .client
            .put_object()
            .bucket(self.bucket(bucket))
            .key(key)
            .content_length(i64::try_from(src.len()).unwrap_or(i64::MAX))
            .body(body);
        if let Some(ct) = &meta.content_type {
            req = req.content_type(ct);
        }
        if !meta.user_meta.is_empty() {
            req = req.set_metadata(Some(
                meta.user_meta
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ));
        }
        let h = |n: &str| meta.headers.get(n).cloned();
        req = req
            .set_cache_control(h("cache-control"))
            .set_content_disposition(h("content-disposition"))
            .set_content_encoding(h("content-encoding"))
            .set_content_language(h("content-language"))
            .set_expires(h("expires").and_then(|e| parse_http_date(&e)));
        if let Some(md5) = &meta.md5_hex {
            req = req.content_md5(content_md5(md5)?);
        }
        let out = match attempt {
            Some(t) => {
                req.customize()
                    .config_override(self.attempt_override(t))
                    .send()
                    .await
            }
            None => req.send().await,
        }
        .map_err(|e| mapper(bucket)(e))?;
        Ok(PutResult {
            etag: unquote(out.e_tag()),
        })
    }

    /// DELETE `key` (a missing object is fine). `attempt`: as for [`S3Origin::put_file`].
    pub async fn delete(
        &self,
        bucket: Option<&str>,
        key: &str,
        attempt: Option<Duration>,
    ) -> Result<(), OriginError> {
        let req = self
            .client
            .delete_object()
            .bucket(self.bucket(bucket))
            .key(key);
        let res = match attempt {
            Some(t) => {
                req.customize()
                    .config_override(self.attempt_override(t))
                    .send()
                    .await
            }
            None => req.send().await,
        };
        match res.map_err(|e| mapper(bucket)(e)) {
            Ok(_) | Err(OriginError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn ensure_bucket(&self) -> Result<(), OriginError> {
        match self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(map_sdk_error)
        {
            Ok(_) => return Ok(()),
            Err(OriginError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let req = self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .set_create_bucket_configuration(self.location_constraint());
        match req.send().await {
            Ok(_) => {
                info!(bucket = %self.bucket, "created bucket");
                Ok(())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            Err(e) => Err(map_sdk_error(e)),
        }
    }
}

impl S3Origin {
    /// The bucket-aware operations of the S3 API (errors pass through, see
    /// [`map_passthrough`]). `attempt`: a per-attempt bound for operations that send a body.
    pub async fn call(&self, call: &Call, attempt: Option<Duration>) -> Result<Reply, OriginError> {
        match call {
            Call::ListBuckets => self.list_buckets().await,
            Call::CreateBucket(b) => self.create_bucket(b).await,
            Call::HeadBucket(b) => self.head_bucket(b).await,
            Call::DeleteBucket(b) => self.delete_bucket(b).await,
            Call::List(b, p) => self.list_objects(b, p).await,
            Call::Copy { dst, src, meta } => self.copy_object(dst, src, meta.as_ref()).await,
            Call::CreateMultipart { loc, meta } => self.create_multipart(loc, meta).await,
            Call::UploadPart {
                loc,
                upload_id,
                part,
                path,
                offset,
                len,
                md5_hex,
            } => {
                let target = PartTarget {
                    loc,
                    upload_id,
                    part: *part,
                };
                let src = PutSource::File {
                    path: path.clone(),
                    offset: *offset,
                    len: *len,
                };
                self.upload_part(target, &src, md5_hex.as_deref(), attempt)
                    .await
            }
            Call::UploadPartCopy {
                loc,
                upload_id,
                part,
                src,
                range,
            } => {
                let target = PartTarget {
                    loc,
                    upload_id,
                    part: *part,
                };
                self.upload_part_copy(target, src, *range).await
            }
            Call::Complete {
                loc,
                upload_id,
                parts,
            } => self.complete_multipart(loc, upload_id, parts).await,
            Call::Abort { loc, upload_id } => self.abort_multipart(loc, upload_id).await,
            Call::ListParts {
                loc,
                upload_id,
                max_parts,
                marker,
            } => self.list_parts(loc, upload_id, *max_parts, *marker).await,
            Call::ListUploads(b, p) => self.list_uploads(b, p).await,
            Call::GetTagging(loc) => self.get_tagging(loc).await,
            Call::PutTagging(loc, tags) => self.put_tagging(loc, tags).await,
            Call::DeleteTagging(loc) => {
                self.client
                    .delete_object_tagging()
                    .bucket(&loc.bucket)
                    .key(&loc.key)
                    .send()
                    .await
                    .map_err(map_passthrough)?;
                Ok(Reply::Unit)
            }
        }
    }

    async fn list_buckets(&self) -> Result<Reply, OriginError> {
        let out = self
            .client
            .list_buckets()
            .send()
            .await
            .map_err(map_passthrough)?;
        Ok(Reply::Buckets(
            out.buckets()
                .iter()
                .map(|b| BucketInfo {
                    name: b.name().unwrap_or_default().to_owned(),
                    created_ms: millis(b.creation_date()),
                })
                .collect(),
        ))
    }

    fn location_constraint(&self) -> Option<CreateBucketConfiguration> {
        (self.region != "us-east-1").then(|| {
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                .build()
        })
    }

    async fn create_bucket(&self, b: &str) -> Result<Reply, OriginError> {
        self.client
            .create_bucket()
            .bucket(b)
            .set_create_bucket_configuration(self.location_constraint())
            .send()
            .await
            .map_err(map_passthrough)?;
        Ok(Reply::Unit)
    }

    async fn head_bucket(&self, b: &str) -> Result<Reply, OriginError> {
        match self.client.head_bucket().bucket(b).send().await {
            Ok(_) => Ok(Reply::Unit),
            Err(e) => Err(match map_passthrough(e) {
                OriginError::NotFound => no_such_bucket(b),
                other => other,
            }),
        }
    }

    async fn delete_bucket(&self, b: &str) -> Result<Reply, OriginError> {
        self.client
            .delete_bucket()
            .bucket(b)
            .send()
            .await
            .map_err(map_passthrough)?;
        Ok(Reply::Unit)
    }

    async fn list_objects(&self, b: &str, p: &ListParams) -> Result<Reply, OriginError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(b)
            .prefix(&p.prefix)
            .set_delimiter(p.delimiter.clone())
            .set_start_after(p.start_after.clone())
            .max_keys(p.max_keys.min(1000) as i32)
            // Keys may hold characters XML 1.0 cannot carry (control characters): asked
            // URL-encoded, they always parse, and are decoded here.
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(map_passthrough)?;
        let url = out.encoding_type() == Some(&EncodingType::Url);
        let dec = |s: &str| if url { url_decode(s) } else { s.to_owned() };
        Ok(Reply::List(ListPage {
            entries: out
                .contents()
                .iter()
                .map(|o| ListEntry {
                    key: dec(o.key().unwrap_or_default()),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: unquote(o.e_tag()),
                    last_modified_ms: millis(o.last_modified()),
                    storage_class: o.storage_class().map(|s| s.as_str().to_owned()),
                })
                .collect(),
            common_prefixes: out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(dec))
                .collect(),
            is_truncated: out.is_truncated().unwrap_or(false),
        }))
    }

    async fn copy_object(
        &self,
        dst: &ObjectLoc,
        src: &CopySource,
        meta: Option<&PutMeta>,
    ) -> Result<Reply, OriginError> {
        let mut req = self
            .client
            .copy_object()
            .bucket(&dst.bucket)
            .key(&dst.key)
            .copy_source(copy_source(src));
        for (name, value) in &src.conditions {
            req = match name.as_str() {
                "x-amz-copy-source-if-match" => req.copy_source_if_match(value),
                "x-amz-copy-source-if-none-match" => req.copy_source_if_none_match(value),
                "x-amz-copy-source-if-modified-since" => {
                    req.set_copy_source_if_modified_since(parse_http_date(value))
                }
                "x-amz-copy-source-if-unmodified-since" => {
                    req.set_copy_source_if_unmodified_since(parse_http_date(value))
                }
                _ => req,
            };
        }
        if let Some(m) = meta {
            let h = |n: &str| m.headers.get(n).cloned();
            req = req
                .metadata_directive(MetadataDirective::Replace)
                .set_content_type(m.content_type.clone())
                .set_metadata(Some(
                    m.user_meta
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ))
                .set_cache_control(h("cache-control"))
                .set_content_disposition(h("content-disposition"))
                .set_content_encoding(h("content-encoding"))
                .set_content_language(h("content-language"))
                .set_expires(h("expires").and_then(|e| parse_http_date(&e)));
        }
        let out = req.send().await.map_err(map_passthrough)?;
        let r = out.copy_object_result();
        Ok(Reply::Copy(CopyResult {
            etag: unquote(r.and_then(|r| r.e_tag())),
            last_modified_ms: millis(r.and_then(|r| r.last_modified())),
        }))
    }

    async fn create_multipart(&self, loc: &ObjectLoc, m: &PutMeta) -> Result<Reply, OriginError> {
        let h = |n: &str| m.headers.get(n).cloned();
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&loc.bucket)
            .key(&loc.key)
            .set_content_type(m.content_type.clone())
            .set_cache_control(h("cache-control"))
            .set_content_disposition(h("content-disposition"))
            .set_content_encoding(h("content-encoding"))
            .set_content_language(h("content-language"))
            .set_expires(h("expires").and_then(|e| parse_http_date(&e)));
        if !m.user_meta.is_empty() {
            req = req.set_metadata(Some(
                m.user_meta
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ));
        }
        let out = req.send().await.map_err(map_passthrough)?;
        Ok(Reply::Text(out.upload_id().unwrap_or_default().to_owned()))
    }

    async fn upload_part(
        &self,
        target: PartTarget<'_>,
        src: &PutSource,
        md5_hex: Option<&str>,
        attempt: Option<Duration>,
    ) -> Result<Reply, OriginError> {
        let body = upload_body(src, "part").await?;
        let mut req = self
            .client
            .upload_part()
            .bucket(&target.loc.bucket)
            .key(&target.loc.key)
            .upload_id(target.upload_id)
            .part_number(target.part as i32)
            .content_length(i64::try_from(src.len()).unwrap_or(i64::MAX))
            .body(body);
        if let Some(md5) = md5_hex {
            req = req.content_md5(content_md5(md5)?);
        }
        let out = match attempt {
            Some(t) => {
                req.customize()
                    .config_override(self.attempt_override(t))
                    .send()
                    .await
            }
            None => req.send().await,
        }
        .map_err(map_passthrough)?;
        Ok(Reply::Text(unquote(out.e_tag())))
    }

    async fn upload_part_copy(
        &self,
        target: PartTarget<'_>,
        src: &CopySource,
        range: Option<(u64, u64)>,
    ) -> Result<Reply, OriginError> {
        let mut req = self
            .client
            .upload_part_copy()
            .bucket(&target.loc.bucket)
            .key(&target.loc.key)
            .upload_id(target.upload_id)
            .part_number(target.part as i32)
            .copy_source(copy_source(src))
            .set_copy_source_range(range.map(|(a, b)| format!("bytes={a}-{b}")));
        for (name, value) in &src.conditions {
            req = match name.as_str() {
                "x-amz-copy-source-if-match" => req.copy_source_if_match(value),
                "x-amz-copy-source-if-none-match" => req.copy_source_if_none_match(value),
                _ => req,
            };
        }
        match req.send().await.map_err(map_passthrough) {
            Ok(out) => {
                let r = out.copy_part_result();
                Ok(Reply::Copy(CopyResult {
                    etag: unquote(r.and_then(|r| r.e_tag())),
                    last_modified_ms: millis(r.and_then(|r| r.last_modified())),
                }))
            }
            // A 200 whose body the SDK could not read (moto names the root element
            // differently): the part list says what was stored.
            Err(OriginError::Service { status: 200, .. }) => self.copied_part(target).await,
            Err(e) => Err(e),
        }
    }

    /// The part UploadPartCopy stored, read back from the part list.
    async fn copied_part(&self, target: PartTarget<'_>) -> Result<Reply, OriginError> {
        let part = target.part;
        let parts = self
            .client
            .list_parts()
            .bucket(&target.loc.bucket)
            .key(&target.loc.key)
            .upload_id(target.upload_id)
            .set_part_number_marker((part > 1).then(|| (part - 1).to_string()))
            .max_parts(1)
            .send()
            .await
            .map_err(map_passthrough)?;
        match parts.parts().first() {
            Some(p) if p.part_number() == Some(part as i32) => Ok(Reply::Copy(CopyResult {
                etag: unquote(p.e_tag()),
                last_modified_ms: millis(p.last_modified()),
            })),
            _ => Err(OriginError::Unavailable(
                "UploadPartCopy answered 200 with an unreadable body".into(),
            )),
        }
    }

    async fn complete_multipart(
        &self,
        loc: &ObjectLoc,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<Reply, OriginError> {
        let parts: Vec<CompletedPart> = parts
            .iter()
            .map(|(n, e)| {
                CompletedPart::builder()
                    .part_number(*n as i32)
                    .e_tag(format!("\"{}\"", e.trim_matches('"')))
                    .build()
            })
            .collect();
        let n = parts.len();
        let res = self
            .client
            .complete_multipart_upload()
            .bucket(&loc.bucket)
            .key(&loc.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(map_passthrough);
        match res {
            Ok(out) => Ok(Reply::Text(unquote(out.e_tag()))),
            // A 200 whose body the SDK could not read (moto names the root element
            // CompleteMultipartUploadResponse): the upload completed if the object
            // now has a multipart ETag of as many parts.
            Err(OriginError::Service { status: 200, .. }) => self.completed_etag(loc, n).await,
            Err(e) => Err(e),
        }
    }

    /// The ETag of a completed multipart object of `parts` parts, read back with HEAD.
    async fn completed_etag(&self, loc: &ObjectLoc, parts: usize) -> Result<Reply, OriginError> {
        let head = self
            .client
            .head_object()
            .bucket(&loc.bucket)
            .key(&loc.key)
            .send()
            .await
            .map_err(map_passthrough)?;
        let etag = unquote(head.e_tag());
        if etag.ends_with(&format!("-{parts}")) {
            Ok(Reply::Text(etag))
        } else {
            Err(OriginError::Unavailable(
                "CompleteMultipartUpload answered 200 with an unreadable body".into(),
            ))
        }
    }

    async fn abort_multipart(
        &self,
        loc: &ObjectLoc,
        upload_id: &str,
    ) -> Result<Reply, OriginError> {
        self.client
            .abort_multipart_upload()
            .bucket(&loc.bucket)
            .key(&loc.key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| match map_passthrough(e) {
                OriginError::NotFound => no_such_upload(upload_id),
                other => other,
            })?;
        Ok(Reply::Unit)
    }

    async fn list_parts(
        &self,
        loc: &ObjectLoc,
        upload_id: &str,
        max_parts: u32,
        marker: Option<u32>,
    ) -> Result<Reply, OriginError> {
        let out = self
            .client
            .list_parts()
            .bucket(&loc.bucket)
            .key(&loc.key)
            .upload_id(upload_id)
            .max_parts(max_parts as i32)
            .set_part_number_marker(marker.map(|m| m.to_string()))
            .send()
            .await
            .map_err(|e| match map_passthrough(e) {
                OriginError::NotFound => no_such_upload(upload_id),
                other => other,
            })?;
        Ok(Reply::Parts(PartsPage {
            parts: out
                .parts()
                .iter()
                .map(|p| PartInfo {
                    part_number: p.part_number().unwrap_or(0).max(0) as u32,
                    etag: unquote(p.e_tag()),
                    size: p.size().unwrap_or(0).max(0) as u64,
                    last_modified_ms: millis(p.last_modified()),
                })
                .collect(),
            is_truncated: out.is_truncated().unwrap_or(false),
            next_marker: out.next_part_number_marker().and_then(|m| m.parse().ok()),
        }))
    }

    async fn list_uploads(&self, b: &str, p: &UploadsParams) -> Result<Reply, OriginError> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(b)
            .prefix(&p.prefix)
            .set_delimiter(p.delimiter.clone())
            .set_key_marker(p.key_marker.clone())
            .set_upload_id_marker(p.upload_id_marker.clone())
            .max_uploads(p.max_uploads.min(1000) as i32)
            .send()
            .await
            .map_err(map_passthrough)?;
        Ok(Reply::Uploads(UploadsPage {
            uploads: out
                .uploads()
                .iter()
                .map(|u| UploadInfo {
                    key: u.key().unwrap_or_default().to_owned(),
                    upload_id: u.upload_id().unwrap_or_default().to_owned(),
                    initiated_ms: millis(u.initiated()),
                })
                .collect(),
            common_prefixes: out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_owned))
                .collect(),
            is_truncated: out.is_truncated().unwrap_or(false),
            next_key_marker: out.next_key_marker().map(str::to_owned),
            next_upload_id_marker: out.next_upload_id_marker().map(str::to_owned),
        }))
    }
}

impl S3Origin {
    async fn get_tagging(&self, loc: &ObjectLoc) -> Result<Reply, OriginError> {
        let out = self
            .client
            .get_object_tagging()
            .bucket(&loc.bucket)
            .key(&loc.key)
            .send()
            .await
            .map_err(map_passthrough)?;
        Ok(Reply::Tags(
            out.tag_set()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned()))
                .collect(),
        ))
    }

    async fn put_tagging(
        &self,
        loc: &ObjectLoc,
        tags: &[(String, String)],
    ) -> Result<Reply, OriginError> {
        let set = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OriginError::Rejected(format!("building the tag set: {e}")))?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(set))
            .build()
            .map_err(|e| OriginError::Rejected(format!("building the tag set: {e}")))?;
        self.client
            .put_object_tagging()
            .bucket(&loc.bucket)
            .key(&loc.key)
            .tagging(tagging)
            .send()
            .await
            .map_err(map_passthrough)?;
        Ok(Reply::Unit)
    }
}

/// The part an UploadPart / UploadPartCopy writes.
#[derive(Debug, Clone, Copy)]
struct PartTarget<'a> {
    loc: &'a ObjectLoc,
    upload_id: &'a str,
    part: u32,
}

/// A re-readable body (the SDK can rewind it to retry): a slice of a file, or bytes.
async fn upload_body(src: &PutSource, what: &str) -> Result<ByteStream, OriginError> {
    match src {
        PutSource::Bytes(b) => Ok(ByteStream::from(b.clone())),
        PutSource::File { path, offset, len } => ByteStream::read_from()
            .path(path)
            .offset(*offset)
            .length(Length::Exact(*len))
            .build()
            .await
            .map_err(|e| {
                OriginError::Rejected(format!("open {what} source {}: {e}", path.display()))
            }),
    }
}

/// The Content-MD5 header value (base64) of a hex MD5.
fn content_md5(md5_hex: &str) -> Result<String, OriginError> {
    let raw = hex::decode(md5_hex)
        .map_err(|_| OriginError::Rejected(format!("invalid md5_hex {md5_hex:?}")))?;
    Ok(aws_smithy_types::base64::encode(raw))
}

/// Connect and per-attempt timeouts (no total: the bridge bounds the whole operation).
fn attempt_timeouts(connect: Duration, attempt: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(connect)
        .operation_attempt_timeout(attempt)
        .build()
}

fn no_such_bucket(b: &str) -> OriginError {
    OriginError::Service {
        status: 404,
        code: "NoSuchBucket".into(),
        message: format!("The specified bucket does not exist: {b}"),
    }
}

fn no_such_upload(id: &str) -> OriginError {
    OriginError::Service {
        status: 404,
        code: "NoSuchUpload".into(),
        message: format!("The specified multipart upload does not exist: {id}"),
    }
}

/// `bucket/key` with the key percent-encoded (but '/' kept), as x-amz-copy-source wants.
fn copy_source(src: &CopySource) -> String {
    let mut out = format!("{}/", src.bucket);
    for b in src.key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A value of a listing asked with `encoding-type=url`: `%XX` and `+` (a space, as S3
/// encodes it) decoded.
fn url_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn parse_http_date(s: &str) -> Option<DateTime> {
    DateTime::from_str(s, aws_smithy_types::date_time::Format::HttpDate).ok()
}

fn stored_headers<const N: usize>(pairs: [(&str, Option<&str>); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
        .collect()
}

/// The error mapping for a request: the native API's for the configured bucket
/// (`bucket: None`), the S3 API's passthrough otherwise.
fn mapper<E, R>(bucket: Option<&str>) -> fn(SdkError<E, R>) -> OriginError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    if bucket.is_some() {
        map_passthrough
    } else {
        map_sdk_error
    }
}

/// For the S3 API: 404 on an object is `NotFound`, retryable trouble `Unavailable`, any
/// other error answer passes through with its status and code.
fn map_passthrough<E, R>(err: SdkError<E, R>) -> OriginError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    if let SdkError::ServiceError(ctx) = &err {
        let status = ctx.raw().status_code();
        let code = ctx.err().code().map(str::to_owned);
        let message = ctx.err().message().unwrap_or_default().to_owned();
        return match (status, code.as_deref()) {
            (304, _) => OriginError::NotModified,
            (404, None | Some("NoSuchKey" | "NotFound")) => OriginError::NotFound,
            // A store that lacks an operation (Garage and PutObjectTagging, say): its
            // answer goes to the client as is; retrying would not help.
            (501, _) | (_, Some("NotImplemented")) => OriginError::Service {
                status,
                code: code.unwrap_or_else(|| "NotImplemented".to_owned()),
                message,
            },
            (429 | 500..=599, _) | (_, Some("SlowDown" | "RequestTimeout")) => {
                OriginError::Unavailable(format!(
                    "the origin answered {status} {}: {message}",
                    code.as_deref().unwrap_or_else(|| default_code(status))
                ))
            }
            _ => OriginError::Service {
                status,
                code: code.unwrap_or_else(|| default_code(status).to_owned()),
                message,
            },
        };
    }
    map_sdk_error(err)
}

/// S3's code for an error answer without a body (HEAD).
fn default_code(status: u16) -> &'static str {
    match status {
        301 => "PermanentRedirect",
        304 => "NotModified",
        400 => "BadRequest",
        403 => "AccessDenied",
        404 => "NoSuchBucket",
        409 => "Conflict",
        412 => "PreconditionFailed",
        416 => "InvalidRange",
        _ => "InternalError",
    }
}

/// Maps an SDK error (after the SDK's own retries) to an [`OriginError`].
fn map_sdk_error<E, R>(err: SdkError<E, R>) -> OriginError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    let text = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ConstructionFailure(_) => OriginError::Rejected(text),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            OriginError::Unavailable(text)
        }
        SdkError::ServiceError(ctx) => classify(ctx.raw().status_code(), ctx.err().code(), text),
        _ => OriginError::Unavailable(text),
    }
}

/// Lets [`map_sdk_error`] read the status of the raw response.
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Classifies a service error response by HTTP status and S3 error code.
pub(crate) fn classify(status: u16, code: Option<&str>, text: String) -> OriginError {
    match (status, code) {
        (304, _) => OriginError::NotModified,
        // A missing bucket is a configuration problem, not a missing object.
        (_, Some("NoSuchBucket")) => OriginError::Rejected(text),
        (404, _) | (_, Some("NoSuchKey")) => OriginError::NotFound,
        (416, _) | (_, Some("InvalidRange")) => OriginError::InvalidRange,
        (401 | 403, _) | (_, Some("AccessDenied")) => OriginError::Denied(text),
        // An operation the store does not implement: not transient.
        (501, _) | (_, Some("NotImplemented")) => OriginError::Rejected(text),
        (429 | 500..=599, _)
        | (_, Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout")) => {
            OriginError::Unavailable(text)
        }
        _ => OriginError::Rejected(text),
    }
}

/// Parses `bytes a-b/size` into (size, (a, b+1)).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, (u64, u64))> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, size) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = b.trim().parse().ok()?;
    let size: u64 = size.trim().parse().ok()?;
    if b < a || b >= size {
        return None;
    }
    Some((size, (a, b + 1)))
}

fn unquote(etag: Option<&str>) -> String {
    etag.map(|e| {
        e.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_owned()
    })
    .unwrap_or_default()
}

fn millis(t: Option<&DateTime>) -> u64 {
    t.and_then(|t| t.to_millis().ok())
        .map(|m| m.max(0) as u64)
        .unwrap_or(0)
}

fn user_meta(m: Option<&std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    })
    .unwrap_or_default()
}

/// Counts the SDK's retries (attempts after the first) in [`OriginStats::retries`].
#[derive(Debug)]
struct RetryCounter {
    stats: Arc<OriginStats>,
}

/// Marker left in an operation's config bag by its first attempt.
#[derive(Debug, Clone)]
struct AttemptSeen;

impl Storable for AttemptSeen {
    type Storer = StoreReplace<Self>;
}

impl Intercept for RetryCounter {
    fn name(&self) -> &'static str {
        "NearcacheRetryCounter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg.load::<AttemptSeen>().is_some() {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            debug!("s3 request: retrying");
        } else {
            cfg.interceptor_state().store_put(AttemptSeen);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((100, (0, 10))));
        assert_eq!(parse_content_range("bytes 5-5/6"), Some((6, (5, 6))));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("bytes 9-5/100"), None);
    }

    #[test]
    fn classify_errors() {
        let t = || "x".to_owned();
        assert!(matches!(
            classify(404, Some("NoSuchKey"), t()),
            OriginError::NotFound
        ));
        assert!(matches!(classify(404, None, t()), OriginError::NotFound));
        assert!(matches!(
            classify(404, Some("NoSuchBucket"), t()),
            OriginError::Rejected(_)
        ));
        assert!(matches!(
            classify(416, None, t()),
            OriginError::InvalidRange
        ));
        assert!(matches!(classify(403, None, t()), OriginError::Denied(_)));
        assert!(matches!(
            classify(503, Some("SlowDown"), t()),
            OriginError::Unavailable(_)
        ));
        assert!(matches!(
            classify(500, None, t()),
            OriginError::Unavailable(_)
        ));
        assert!(matches!(
            classify(501, Some("NotImplemented"), t()),
            OriginError::Rejected(_)
        ));
        assert!(matches!(
            classify(400, Some("InvalidArgument"), t()),
            OriginError::Rejected(_)
        ));
        assert_eq!(unquote(Some("\"abc\"")), "abc");
    }

    #[test]
    fn url_encoded_listing_values_decode() {
        assert_eq!(url_decode("a%01b+c%2Bd%0D%0A%C3%BC/"), "a\u{1}b c+d\r\nü/");
        assert_eq!(url_decode("100%"), "100%");
    }
}
