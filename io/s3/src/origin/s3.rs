//! aws-sdk-s3 backend.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, Length};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_s3::Client;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use tracing::{debug, info};

use super::{BodySource, OpenedGet};
use crate::{OriginConfig, OriginError, OriginKind, OriginStats, PutMeta, PutResult, RemoteMeta};

pub(crate) struct S3Origin {
    client: Client,
    bucket: String,
    region: String,
}

impl S3Origin {
    /// Builds the client. Does not contact the origin (it may be down at start-up).
    pub async fn connect(
        cfg: &OriginConfig,
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
        // idle timeout per chunk while streaming. max_attempts and backoff bound the total.
        let timeout = TimeoutConfig::builder()
            .connect_timeout(cfg.connect_timeout)
            .operation_attempt_timeout(cfg.operation_timeout)
            .build();
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
        Ok(S3Origin {
            client: Client::from_conf(builder.build()),
            bucket: bucket.clone(),
            region: region.clone(),
        })
    }

    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<OpenedGet, OriginError> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some((a, b)) = range {
            if b <= a {
                return Err(OriginError::InvalidRange);
            }
            req = req.range(format!("bytes={}-{}", a, b - 1));
        }
        let out = req.send().await.map_err(map_sdk_error)?;
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
        };
        Ok(OpenedGet {
            meta,
            range: got,
            body: BodySource::S3(out.body),
        })
    }

    pub async fn head(&self, key: &str) -> Result<RemoteMeta, OriginError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(map_sdk_error)?;
        Ok(RemoteMeta {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: unquote(out.e_tag()),
            content_type: out.content_type().map(str::to_owned),
            last_modified_ms: millis(out.last_modified()),
            user_meta: user_meta(out.metadata()),
        })
    }

    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        offset: u64,
        len: u64,
        meta: &PutMeta,
    ) -> Result<PutResult, OriginError> {
        // A path-backed body: the SDK can rewind it to retry.
        let body = ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| {
                OriginError::Rejected(format!("open upload source {}: {e}", path.display()))
            })?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
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
        if let Some(md5) = &meta.md5_hex {
            let raw = hex::decode(md5)
                .map_err(|_| OriginError::Rejected(format!("invalid md5_hex {md5:?}")))?;
            req = req.content_md5(aws_smithy_types::base64::encode(raw));
        }
        let out = req.send().await.map_err(map_sdk_error)?;
        Ok(PutResult {
            etag: unquote(out.e_tag()),
        })
    }

    pub async fn delete(&self, key: &str) -> Result<(), OriginError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(map_sdk_error)
        {
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
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        if self.region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
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
        // A missing bucket is a configuration problem, not a missing object.
        (_, Some("NoSuchBucket")) => OriginError::Rejected(text),
        (404, _) | (_, Some("NoSuchKey")) => OriginError::NotFound,
        (416, _) | (_, Some("InvalidRange")) => OriginError::InvalidRange,
        (401 | 403, _) | (_, Some("AccessDenied")) => OriginError::Denied(text),
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
            classify(400, Some("InvalidArgument"), t()),
            OriginError::Rejected(_)
        ));
        assert_eq!(unquote(Some("\"abc\"")), "abc");
    }
}
