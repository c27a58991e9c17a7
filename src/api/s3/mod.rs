//! The S3-compatible API: awscli and the SDKs work through nearcache unchanged.
//!
//! - `auth`: AWS Signature V4 verification (header, presigned, aws-chunked streaming).
//! - this module: the listener's handler (addressing, authentication, permissions,
//!   routing to an operation, S3's XML errors) and the bucket operations;
//! - `object`: GetObject/HeadObject (the native API's GET path: same store, same
//!   coalescing), PutObject, DeleteObject(s), CopyObject;
//! - `list`: ListObjects v1/v2 from the origin merged with writes pending upload;
//! - `multipart`: multipart uploads, passed through to the origin;
//! - `error`: the one mapping from errors to S3 codes; `xml`: escaping and a small reader.
//!
//! An object `KEY` of bucket `BUCKET` is cached under `BUCKET/KEY` (native ids are ULIDs and
//! never contain '/', so the two APIs' keys cannot collide) on the shard that owns that
//! string. Writes go through the shard store and its uploader like the native API's level
//! 1; unless the bucket is write-behind, the answer waits for the origin.

pub mod auth;
pub mod error;
#[cfg(test)]
mod fuzz;
pub(crate) mod list;
mod multipart;
mod object;
mod part;
mod render;
mod subresource;
mod xml;

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nearcache_s3::ObjectLoc;
use nearcache_s3proto::query::{has_escapes, raw_pairs};

use self::auth::{BodyCheck, BodyDecoder, ChecksumAlgorithm, ChecksumCheck, Credential, KeyStore};
use self::error::S3Error;
use self::xml::{escape, iso_time, DECL, NS};
use crate::body::Body;
use crate::config::S3ApiConfig;
use crate::ctx::{ActiveGuard, ShardCtx};
use crate::metrics::Route;
use crate::object::CacheKey;

thread_local! {
    /// Presigned reads verified on this shard's thread: a link fetched again is checked
    /// against the request it was verified for instead of being verified again.
    static PRESIGNED: std::cell::RefCell<auth::PresignedCache> = Default::default();
}

/// Largest XML request body read (DeleteObjects with 1000 long keys fits).
const MAX_XML_BODY: usize = 4 << 20;

/// The API's configuration, resolved at start-up and shared by all shards, and the
/// buckets seen to exist in the origin (node-wide, so a bucket deleted through one
/// shard is forgotten by all).
pub struct S3State {
    keys: KeyStore,
    has_keys: bool,
    write_behind: HashMap<String, bool>,
    /// Buckets anyone may read without signing (`public_read`).
    public_read: HashSet<String>,
    domain: Option<String>,
    /// Buckets seen to exist in the origin, so writes don't queue uploads that can never
    /// succeed (NoSuchBucket) and aren't checked on every request. Read lock-free.
    known_buckets: arc_swap::ArcSwap<HashSet<String>>,
    /// Part sizes of multipart objects learned from the origin, so `partNumber` reads of
    /// cached objects are served from the cache (see `part`).
    part_layouts: part::Layouts,
}

impl S3State {
    pub fn from_config(cfg: &S3ApiConfig) -> S3State {
        let creds = cfg
            .keys
            .iter()
            .map(|k| Credential {
                access_key: k.access_key.clone(),
                secret_key: k.secret_key.clone(),
                buckets: k.buckets.clone(),
                read_only: k.read_only,
            })
            .collect();
        S3State {
            keys: KeyStore::new(creds),
            has_keys: !cfg.keys.is_empty(),
            write_behind: cfg
                .buckets
                .iter()
                .map(|b| (b.name.clone(), b.write_behind))
                .collect(),
            public_read: cfg
                .buckets
                .iter()
                .filter(|b| b.public_read)
                .map(|b| b.name.clone())
                .collect(),
            domain: cfg
                .domain
                .as_ref()
                .map(|d| d.trim_matches('.').to_ascii_lowercase())
                .filter(|d| !d.is_empty()),
            known_buckets: Default::default(),
            part_layouts: Default::default(),
        }
    }

    pub fn public_read(&self, bucket: &str) -> bool {
        self.public_read.contains(bucket)
    }

    fn knows_bucket(&self, bucket: &str) -> bool {
        self.known_buckets.load().contains(bucket)
    }

    fn learn_bucket(&self, bucket: &str) {
        self.known_buckets.rcu(|set| {
            let mut set = HashSet::clone(set);
            set.insert(bucket.to_owned());
            set
        });
    }

    fn forget_bucket(&self, bucket: &str) {
        self.known_buckets.rcu(|set| {
            let mut set = HashSet::clone(set);
            set.remove(bucket);
            set
        });
    }

    pub fn has_keys(&self) -> bool {
        self.has_keys
    }

    pub fn write_behind(&self, bucket: &str) -> bool {
        self.write_behind.get(bucket).copied().unwrap_or(false)
    }
}

/// Fails with the origin's error (NoSuchBucket) unless `bucket` exists.
pub(crate) async fn ensure_bucket(
    ctx: &ShardCtx,
    req: &S3Req,
    bucket: &str,
) -> Result<(), S3Error> {
    if req.state.knows_bucket(bucket) {
        return Ok(());
    }
    ctx.objects.origin.head_bucket(bucket).await?;
    req.state.learn_bucket(bucket);
    Ok(())
}

/// One authenticated request, parsed.
pub(crate) struct S3Req {
    /// The request's URI as received (a read is proxied with it).
    pub uri: http::Uri,
    /// Proxied here by another node: served here, never forwarded again.
    pub forwarded: bool,
    pub method: Method,
    pub bucket: Option<String>,
    pub key: Option<String>,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body_check: BodyCheck,
    /// The trailing checksum `x-amz-trailer` declared: an aws-chunked body must carry it.
    pub trailer: Option<ChecksumAlgorithm>,
    /// The API's configuration and known buckets.
    pub state: Arc<S3State>,
    /// Unsigned: allowed only for reads of a `public_read` bucket.
    pub anonymous: bool,
}

impl S3Req {
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn bucket(&self) -> &str {
        self.bucket.as_deref().unwrap_or_default()
    }

    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or_default()
    }

    /// The cache key of the addressed object.
    pub fn cache_key(&self) -> CacheKey {
        CacheKey::s3(self.bucket(), self.key())
    }

    pub fn loc(&self) -> ObjectLoc {
        ObjectLoc {
            bucket: self.bucket().to_owned(),
            key: self.key().to_owned(),
        }
    }

    /// The object's length after aws-chunked decoding, when the client says.
    pub fn decoded_len(&self) -> Result<Option<u64>, S3Error> {
        let name = if self.body_check.is_chunked() {
            "x-amz-decoded-content-length"
        } else {
            "content-length"
        };
        match self.header(name) {
            None if self.body_check.is_chunked() => Err(S3Error::new(
                StatusCode::LENGTH_REQUIRED,
                "MissingContentLength",
                "You must provide the x-amz-decoded-content-length HTTP header.",
            )),
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| S3Error::invalid_argument(format!("{name} is not a number"))),
        }
    }

    /// A body decoder and the Content-MD5 / x-amz-checksum-* check for this request.
    pub fn body_checks(&self) -> Result<(BodyDecoder, ChecksumCheck), S3Error> {
        let decoder =
            BodyDecoder::with_trailer(self.body_check.clone(), self.decoded_len()?, self.trailer);
        let checks = ChecksumCheck::from_headers(&self.headers)?;
        Ok((decoder, checks))
    }
}

/// Reads a small request body whole (XML documents), decoded and verified.
pub(crate) async fn read_small_body(req: &S3Req, mut body: Incoming) -> Result<Bytes, S3Error> {
    let (mut decoder, mut checks) = req.body_checks()?;
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            S3Error::new(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                format!("reading the request body failed: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for chunk in decoder.feed(data)? {
            checks.update(&chunk);
            out.extend_from_slice(&chunk);
            if out.len() > MAX_XML_BODY {
                return Err(S3Error::new(
                    StatusCode::BAD_REQUEST,
                    "MaxMessageLengthExceeded",
                    "Your request was too big.",
                ));
            }
        }
    }
    decoder.finish()?;
    checks.finish()?;
    Ok(out.freeze())
}

const X_AMZ_REQUEST_ID: HeaderName = HeaderName::from_static("x-amz-request-id");

/// S3-style request id: 16 upper-case hex digits, distinct per request of a thread (a
/// random start, then an odd-step sequence that visits every value once).
fn request_id() -> HeaderValue {
    thread_local! {
        static NEXT: std::cell::Cell<u64> = std::cell::Cell::new(rand_u64());
    }
    let id = NEXT.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(0x9E37_79B9_7F4A_7C15));
        id
    });
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        let nibble = id.rotate_left(4 * (i as u32 + 1)) & 0xF;
        *b = b"0123456789ABCDEF"
            .get(nibble as usize)
            .copied()
            .unwrap_or(b'0');
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

pub async fn handle(
    ctx: Rc<ShardCtx>,
    state: Arc<S3State>,
    req: Request<Incoming>,
) -> Response<Body> {
    serve(ctx, state, req, false).await
}

/// An object request proxied here by another node (this node owns the key): served
/// here, never forwarded again. Authentication is checked again.
pub async fn handle_forwarded(
    ctx: Rc<ShardCtx>,
    state: Arc<S3State>,
    req: Request<Incoming>,
) -> Response<Body> {
    serve(ctx, state, req, true).await
}

async fn serve(
    ctx: Rc<ShardCtx>,
    state: Arc<S3State>,
    req: Request<Incoming>,
    forwarded: bool,
) -> Response<Body> {
    let start = Instant::now();
    let _active = ActiveGuard::new(&ctx);
    let rid = request_id();
    let head = req.method() == Method::HEAD;
    // Kept for error bodies (a cheap clone: the URI's bytes are shared).
    let uri = req.uri().clone();
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut route = Route::S3Other;
    let mut resp = match run(&ctx, state, req, &mut route, forwarded).await {
        Ok(r) => r,
        Err(e) => e.into_response(uri.path(), rid.to_str().unwrap_or_default(), head),
    };
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        // A request refused before its body was read (a failed If-Match on PutObject, a
        // bad Content-MD5): its unread bytes must not be parsed as the next request on
        // this connection (they were, as a method like `xPUT`), so the connection ends.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.headers_mut().insert(X_AMZ_REQUEST_ID, rid);
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("nearcache"));
    ctx.finish(route, start, resp)
}

/// Sub-resources of S3 that nearcache does not implement: their presence in the query
/// makes a request NotImplemented rather than a plain object or bucket operation.
const UNSUPPORTED: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "attributes",
    "cors",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "legal-hold",
    "lifecycle",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "restore",
    "retention",
    "select",
    "session",
    "tagging",
    "torrent",
    "versioning",
    "versions",
    "website",
];

async fn run(
    ctx: &Rc<ShardCtx>,
    state: Arc<S3State>,
    req: Request<Incoming>,
    route: &mut Route,
    forwarded: bool,
) -> Result<Response<Body>, S3Error> {
    let (mut parts, mut body) = req.into_parts();
    let s3 = &*state;
    let scan = scan_query(parts.uri.query().unwrap_or(""));
    // No Authorization header and no presigned query.
    let anonymous = !scan.presigned && !parts.headers.contains_key(header::AUTHORIZATION);
    let (cred, body_check, trailer) = if anonymous && anonymous_may_try(s3, &parts) {
        // Checked again once the operation is known: only reads of a public bucket.
        let (bucket, _) = address(&parts, s3.domain.as_deref())?;
        let cred = Credential {
            access_key: "anonymous".into(),
            secret_key: String::new(),
            buckets: bucket.into_iter().collect(),
            read_only: true,
        };
        (std::borrow::Cow::Owned(cred), BodyCheck::None, None)
    } else {
        if !s3.has_keys {
            return Err(S3Error::access_denied(
                "the S3 API has no access keys configured ([[s3api.keys]])",
            ));
        }
        let now = SystemTime::now();
        let verified = PRESIGNED.with(|c| c.borrow_mut().verify_head(&parts, &s3.keys, now))?;
        let cred = s3
            .keys
            .get(&verified.access_key)
            .ok_or_else(|| S3Error::access_denied("unknown access key"))?;
        (
            std::borrow::Cow::Borrowed(cred),
            verified.body,
            verified.trailer,
        )
    };
    let (bucket, key) = address(&parts, s3.domain.as_deref())?;
    // Refused by the node that takes it, before it goes to an owner.
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        crate::object::policy::check_write(&ctx.node.cfg, bucket.as_deref())?;
    }
    // In a cluster, single-object requests go to the key's owner (which checks the
    // signature again); multipart uploads and listings stay on this node.
    if let (false, Some(cs), Some(b), Some(k)) = (forwarded, ctx.cluster.clone(), &bucket, &key) {
        let multipart = scan
            .params
            .iter()
            .any(|(n, _)| n == "uploadId" || n == "uploads" || n == "partNumber");
        let ckey = CacheKey::s3(b, k);
        // Reads are placed by GetObject itself (a copy held here serves in one hop).
        let object_op = matches!(parts.method, Method::PUT | Method::DELETE);
        if object_op && !multipart && ckey.fits_store() {
            let mut req = Request::from_parts(parts, body);
            req.headers_mut()
                .insert(crate::cluster::H_API, HeaderValue::from_static("s3"));
            let placed = Box::pin(crate::cluster::route::route_write(
                ctx,
                &cs,
                ckey.as_str(),
                1,
                req,
            ));
            match placed.await {
                Ok(crate::cluster::route::Route::Local(r)) => (parts, body) = r.into_parts(),
                Ok(crate::cluster::route::Route::Remote(resp)) => return Ok(resp),
                Err(e) => return Err(S3Error::from(crate::object::ObjectError::from(e))),
            }
        }
    }
    let query = scan.params;
    let req = S3Req {
        uri: parts.uri.clone(),
        forwarded,
        method: parts.method.clone(),
        bucket,
        key,
        query,
        headers: parts.headers,
        body_check,
        trailer,
        state: state.clone(),
        anonymous,
    };
    if let Some(b) = &req.bucket {
        if !may_use(&cred, b) {
            return Err(S3Error::access_denied(format!(
                "access key {} may not use bucket {b}",
                cred.access_key
            )));
        }
    }
    let read = matches!(req.method, Method::GET | Method::HEAD);
    if cred.read_only && !read {
        return Err(S3Error::access_denied(format!(
            "access key {} is read-only",
            cred.access_key
        )));
    }
    let ep = endpoint(&req)?;
    if ep.plain() && !req.query.is_empty() {
        if let Some(sub) = UNSUPPORTED.iter().find(|s| req.has(s)) {
            return Err(S3Error::not_implemented(format!("the ?{sub} sub-resource")));
        }
    }
    if req.q("versionId").is_some_and(|v| v != "null") {
        return Err(S3Error::not_implemented("object versions"));
    }
    if req.anonymous && !ep.public_read() {
        return Err(S3Error::access_denied(
            "Anonymous access is not allowed for this operation: sign the request with AWS \
             Signature Version 4",
        ));
    }
    *route = ep.route();
    // Every operation but GetObject runs boxed: the hot read's future (and every move
    // of it) stays the size of GetObject's, not of the largest operation's.
    match ep {
        Endpoint::ListBuckets => Box::pin(list_buckets(ctx, &cred)).await,
        Endpoint::ListUploads => Box::pin(multipart::list_uploads(ctx, &req)).await,
        Endpoint::ListObjects { v2 } => Box::pin(list::list_objects(ctx, &req, v2)).await,
        Endpoint::GetBucketLocation => Ok(xml_response(format!(
            "{DECL}<LocationConstraint xmlns=\"{NS}\">{}</LocationConstraint>",
            escape(bucket_region(ctx))
        ))),
        Endpoint::DeleteObjects => Box::pin(object::delete_objects(ctx, &req, body)).await,
        Endpoint::HeadBucket => {
            ctx.objects.origin.head_bucket(req.bucket()).await?;
            Ok(empty(StatusCode::OK))
        }
        Endpoint::CreateBucket => Box::pin(create_bucket(ctx, &req, body)).await,
        Endpoint::DeleteBucket => {
            crate::object::backends::delete_bucket(&ctx.objects, req.bucket()).await?;
            req.state.forget_bucket(req.bucket());
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Endpoint::ListParts => Box::pin(multipart::list_parts(ctx, &req)).await,
        Endpoint::GetObject => object::get_object(ctx, &req).await,
        Endpoint::UploadPartCopy => Box::pin(multipart::upload_part_copy(ctx, &req, &cred)).await,
        Endpoint::UploadPart => Box::pin(multipart::upload_part(ctx, &req, body)).await,
        Endpoint::CopyObject => Box::pin(object::copy_object(ctx, &req, &cred)).await,
        Endpoint::PutObject => Box::pin(object::put_object(ctx, &req, body)).await,
        Endpoint::AbortMultipart => Box::pin(multipart::abort(ctx, &req)).await,
        Endpoint::DeleteObject => Box::pin(object::delete_object(ctx, &req)).await,
        Endpoint::CreateMultipart => Box::pin(multipart::create(ctx, &req)).await,
        Endpoint::CompleteMultipart => Box::pin(multipart::complete(ctx, &req, body)).await,
        Endpoint::ListVersions => Box::pin(list::list_versions(ctx, &req)).await,
        Endpoint::GetBucketVersioning => Box::pin(subresource::bucket_versioning(ctx, &req)).await,
        Endpoint::GetBucketAcl => Box::pin(subresource::bucket_acl(ctx, &req)).await,
        Endpoint::GetObjectAcl => Box::pin(subresource::object_acl(ctx, &req)).await,
        Endpoint::BucketConfigMissing(sub) => {
            Box::pin(subresource::missing_config(ctx, &req, sub)).await
        }
        Endpoint::GetObjectTagging => Box::pin(subresource::get_tagging(ctx, &req)).await,
        Endpoint::PutObjectTagging => Box::pin(subresource::put_tagging(ctx, &req, body)).await,
        Endpoint::DeleteObjectTagging => Box::pin(subresource::delete_tagging(ctx, &req)).await,
    }
}

/// An anonymous read addressed to a `public_read` bucket (the operation is checked later).
fn anonymous_may_try(s3: &S3State, parts: &http::request::Parts) -> bool {
    matches!(parts.method, Method::GET | Method::HEAD)
        && matches!(address(parts, s3.domain.as_deref()), Ok((Some(b), _)) if s3.public_read(&b))
}

/// The S3 operation a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    ListBuckets,
    ListUploads,
    ListObjects {
        v2: bool,
    },
    GetBucketLocation,
    DeleteObjects,
    HeadBucket,
    CreateBucket,
    DeleteBucket,
    ListParts,
    /// GetObject and HeadObject.
    GetObject,
    UploadPartCopy,
    UploadPart,
    CopyObject,
    PutObject,
    AbortMultipart,
    DeleteObject,
    CreateMultipart,
    CompleteMultipart,
    /// ListObjectVersions: an unversioned bucket's objects, each as version `null`.
    ListVersions,
    GetBucketVersioning,
    GetBucketAcl,
    GetObjectAcl,
    /// A bucket configuration nearcache never has (lifecycle, policy, CORS, website, tags):
    /// S3's answer for a bucket without one.
    BucketConfigMissing(&'static str),
    GetObjectTagging,
    PutObjectTagging,
    DeleteObjectTagging,
}

impl Endpoint {
    fn route(self) -> Route {
        use Endpoint::*;
        match self {
            ListBuckets | ListUploads | ListObjects { .. } | ListParts => Route::S3List,
            GetObject => Route::S3Read,
            GetBucketLocation | HeadBucket => Route::S3Other,
            ListVersions => Route::S3List,
            GetBucketVersioning
            | GetBucketAcl
            | GetObjectAcl
            | BucketConfigMissing(_)
            | GetObjectTagging => Route::S3Other,
            DeleteObjects | CreateBucket | DeleteBucket | UploadPartCopy | UploadPart
            | CopyObject | PutObject | AbortMultipart | DeleteObject | CreateMultipart
            | CompleteMultipart | PutObjectTagging | DeleteObjectTagging => Route::S3Write,
        }
    }

    /// Not a sub-resource operation: other sub-resources in its query are NotImplemented.
    fn plain(self) -> bool {
        use Endpoint::*;
        !matches!(
            self,
            ListVersions
                | GetBucketVersioning
                | GetBucketAcl
                | GetObjectAcl
                | BucketConfigMissing(_)
                | GetObjectTagging
                | PutObjectTagging
                | DeleteObjectTagging
        )
    }

    /// What an anonymous client may do with a `public_read` bucket (S3's public-read:
    /// read objects, list the bucket).
    fn public_read(self) -> bool {
        use Endpoint::*;
        matches!(
            self,
            GetObject | ListObjects { .. } | HeadBucket | GetBucketLocation
        )
    }
}

/// Bucket configurations nearcache never has, and the error S3 answers for a bucket
/// without one.
const MISSING_CONFIGS: [(&str, &str, &str); 5] = [
    (
        "lifecycle",
        "NoSuchLifecycleConfiguration",
        "The lifecycle configuration does not exist",
    ),
    (
        "policy",
        "NoSuchBucketPolicy",
        "The bucket policy does not exist",
    ),
    (
        "cors",
        "NoSuchCORSConfiguration",
        "The CORS configuration does not exist",
    ),
    (
        "website",
        "NoSuchWebsiteConfiguration",
        "The specified bucket does not have a website configuration",
    ),
    ("tagging", "NoSuchTagSet", "The TagSet does not exist"),
];

/// Asked of every object request (is it a copy?): a constant, so the lookup only hashes.
const X_AMZ_COPY_SOURCE: HeaderName = HeaderName::from_static("x-amz-copy-source");

/// Which operation a request names, from its method, address, query and headers.
/// Pure: decides nothing else.
fn endpoint(req: &S3Req) -> Result<Endpoint, S3Error> {
    use Endpoint::*;
    let m = &req.method;
    let copy = req.headers.contains_key(X_AMZ_COPY_SOURCE);
    Ok(match (&req.bucket, &req.key) {
        (None, _) => match *m {
            Method::GET => ListBuckets,
            _ => return Err(S3Error::not_implemented(format!("{m} on the service"))),
        },
        (Some(_), None) => match *m {
            Method::GET if req.has("versions") => ListVersions,
            Method::GET if req.has("versioning") => GetBucketVersioning,
            Method::GET if req.has("acl") => GetBucketAcl,
            Method::GET if MISSING_CONFIGS.iter().any(|(s, ..)| req.has(s)) => {
                let (sub, ..) = MISSING_CONFIGS
                    .iter()
                    .find(|(s, ..)| req.has(s))
                    .expect("found above");
                BucketConfigMissing(sub)
            }
            Method::GET if req.has("uploads") => ListUploads,
            Method::GET if req.q("list-type") == Some("2") => ListObjects { v2: true },
            Method::GET if req.has("location") => GetBucketLocation,
            Method::GET => ListObjects { v2: false },
            Method::POST if req.has("delete") => DeleteObjects,
            Method::HEAD => HeadBucket,
            Method::PUT => CreateBucket,
            Method::DELETE => DeleteBucket,
            _ => return Err(S3Error::not_implemented(format!("{m} on a bucket"))),
        },
        (Some(_), Some(_)) => {
            let upload = req.has("uploadId");
            let tagging = req.has("tagging");
            match *m {
                Method::GET if req.has("acl") => GetObjectAcl,
                Method::GET if tagging => GetObjectTagging,
                Method::PUT if tagging => PutObjectTagging,
                Method::DELETE if tagging => DeleteObjectTagging,
                Method::GET if upload => ListParts,
                Method::GET | Method::HEAD => GetObject,
                Method::PUT if upload && copy => UploadPartCopy,
                Method::PUT if upload || req.has("partNumber") => UploadPart,
                Method::PUT if copy => CopyObject,
                Method::PUT => PutObject,
                Method::DELETE if upload => AbortMultipart,
                Method::DELETE => DeleteObject,
                Method::POST if req.has("uploads") => CreateMultipart,
                Method::POST if upload => CompleteMultipart,
                _ => return Err(S3Error::not_implemented(format!("{m} on an object"))),
            }
        }
    })
}

/// Whether a key may use a bucket: `*` or the bucket's name in its list.
pub(crate) fn may_use(cred: &Credential, bucket: &str) -> bool {
    cred.buckets.iter().any(|b| b == "*" || b == bucket)
}

fn bucket_region(ctx: &ShardCtx) -> &str {
    let r = ctx.node.cfg.origin.region.as_str();
    if r == "us-east-1" {
        ""
    } else {
        r
    }
}

/// (bucket, key) from the Host header (virtual-host style under the configured domain)
/// or the path (path style).
#[cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used
    )
)]
pub(crate) fn address(
    parts: &http::request::Parts,
    domain: Option<&str>,
) -> Result<(Option<String>, Option<String>), S3Error> {
    let raw_host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or_default();
    let host: std::borrow::Cow<'_, str> = if raw_host.bytes().any(|b| b.is_ascii_uppercase()) {
        raw_host.to_ascii_lowercase().into()
    } else {
        raw_host.into()
    };
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']') => h,
        _ => &host,
    };
    // A fully qualified name may end in a dot: `b.domain.` is `b.domain`.
    let host = host.strip_suffix('.').unwrap_or(host);
    let path = parts.uri.path();
    let vhost = domain.and_then(|d| {
        host.strip_suffix(d)
            .and_then(|h| h.strip_suffix('.'))
            .filter(|b| !b.is_empty())
            .map(str::to_owned)
    });
    let decode = |s: &str| -> Result<String, S3Error> {
        // The path is valid UTF-8 already; only escapes can make it otherwise.
        if memchr::memchr(b'%', s.as_bytes()).is_none() {
            return Ok(s.to_owned());
        }
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| {
                S3Error::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidURI",
                    "Couldn't parse the specified URI.",
                )
            })
    };
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (bucket, key) = match vhost {
        Some(b) => (Some(b), rest),
        None => {
            let (b, k) = rest.split_once('/').unwrap_or((rest, ""));
            if b.is_empty() {
                return Ok((None, None));
            }
            (Some(decode(b)?), k)
        }
    };
    let key = if key.is_empty() {
        None
    } else {
        Some(decode(key)?)
    };
    if let Some(b) = &bucket {
        let ok = (3..=63).contains(&b.len())
            && b.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.' || c == b'_'
            });
        if !ok {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidBucketName",
                format!("The specified bucket is not valid: {b}"),
            ));
        }
    }
    if key.as_ref().is_some_and(|k| k.len() > 1024) {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "KeyTooLongError",
            "Your key is too long",
        ));
    }
    Ok((bucket, key))
}

/// A presigned URL's SigV4 parameters: verified before the request is parsed, read by
/// no operation (so not decoded into [`S3Req::query`], which saves a presigned GET
/// fourteen allocations).
const PRESIGN_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// What the edge reads from a query, in one pass over it.
struct QueryScan {
    /// It has an `X-Amz-Algorithm` parameter (names compared decoded): presigned.
    presigned: bool,
    /// The parameters an operation reads, decoded: all but the presigned SigV4 ones.
    params: Vec<(String, String)>,
}

fn scan_query(q: &str) -> QueryScan {
    let mut scan = QueryScan {
        presigned: false,
        params: Vec::new(),
    };
    for (k, v) in raw_pairs(q) {
        if k.starts_with("X-Amz-") && PRESIGN_PARAMS.contains(&k) {
            scan.presigned |= k == "X-Amz-Algorithm";
            continue;
        }
        let name = decode_component(k);
        scan.presigned |= name == "X-Amz-Algorithm";
        scan.params
            .push((name.into_owned(), decode_component(v).into_owned()));
    }
    scan
}

/// Query parameters, `+` and `%XX` decoded.
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    raw_pairs(q)
        .map(|(k, v)| {
            (
                decode_component(k).into_owned(),
                decode_component(v).into_owned(),
            )
        })
        .collect()
}

/// A query name or value, `+` and `%XX` decoded (invalid UTF-8 replaced).
fn decode_component(s: &str) -> std::borrow::Cow<'_, str> {
    if !has_escapes(s) {
        s.into()
    } else if s.contains('+') {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
            .into()
    } else {
        percent_encoding::percent_decode_str(s).decode_utf8_lossy()
    }
}

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = status;
    r
}

pub(crate) fn xml_response(doc: String) -> Response<Body> {
    let mut r = Response::new(Body::full(doc));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    r
}

async fn list_buckets(ctx: &ShardCtx, cred: &Credential) -> Result<Response<Body>, S3Error> {
    let buckets = ctx.objects.origin.list_buckets().await?;
    let mut doc = format!(
        "{DECL}<ListAllMyBucketsResult xmlns=\"{NS}\"><Owner><ID>nearcache</ID>\
         <DisplayName>nearcache</DisplayName></Owner><Buckets>"
    );
    for b in buckets.iter().filter(|b| may_use(cred, &b.name)) {
        let _ = write!(
            doc,
            "<Bucket><Name>{}</Name><CreationDate>{}</CreationDate></Bucket>",
            escape(&b.name),
            iso_time(b.created_ms)
        );
    }
    doc.push_str("</Buckets></ListAllMyBucketsResult>");
    Ok(xml_response(doc))
}

async fn create_bucket(
    ctx: &ShardCtx,
    req: &S3Req,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    // The body (CreateBucketConfiguration) may name a location: nearcache creates buckets
    // in the origin's configured region.
    read_small_body(req, body).await?;
    crate::object::backends::create_bucket(&ctx.objects, req.bucket()).await?;
    req.state.learn_bucket(req.bucket());
    let mut r = empty(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(&format!("/{}", req.bucket())) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[test]
    fn operations_see_every_parameter_but_the_presigned_signature() {
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261202%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date=20261202T000000Z&X-Amz-Expires=600&X-Amz-SignedHeaders=host\
                 &X-Amz-Security-Token=t&response-content-type=text%2Fplain&versionId=\
                 &x-amz-meta-kept=1&X-Amz-Signature=abc";
        let got = scan_query(q).params;
        assert_eq!(
            got,
            vec![
                ("response-content-type".into(), "text/plain".into()),
                ("versionId".into(), String::new()),
                ("x-amz-meta-kept".into(), "1".into()),
            ]
        );
        assert_eq!(parse_query(q).len(), 10, "everything, for the auth check");
        assert!(scan_query(q).presigned);
        // Names are compared decoded; values do not count.
        assert!(scan_query("X-Amz-%41lgorithm=AWS4-HMAC-SHA256").presigned);
        assert!(!scan_query("a=X-Amz-Algorithm&X-Amz-Algorithmx=1").presigned);
        assert!(!scan_query("").presigned);
    }

    fn req(
        method: Method,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &str,
        copy: bool,
    ) -> S3Req {
        let mut headers = HeaderMap::new();
        if copy {
            headers.insert("x-amz-copy-source", HeaderValue::from_static("/b/k"));
        }
        S3Req {
            uri: http::Uri::from_static("/"),
            forwarded: false,
            method,
            bucket: bucket.map(Into::into),
            key: key.map(Into::into),
            query: parse_query(query),
            headers,
            body_check: BodyCheck::None,
            trailer: None,
            state: Arc::new(S3State::from_config(&S3ApiConfig::default())),
            anonymous: false,
        }
    }

    /// Regression: `x-amz-trailer` was not passed to the body decoder, so an unsigned-trailer
    /// body cut off exactly where its trailer starts was stored without any checksum check.
    #[test]
    fn an_unsigned_body_must_carry_the_trailer_x_amz_trailer_declared() {
        let data = b"hello world";
        let crc = ChecksumAlgorithm::Crc32.checksum_b64(data);
        let head = format!("{:x}\r\nhello world\r\n0\r\n", data.len());
        let whole = format!("{head}x-amz-checksum-crc32:{crc}\r\n\r\n");
        let mut r = req(Method::PUT, Some("bkt"), Some("key"), "", false);
        r.body_check = BodyCheck::UnsignedChunks;
        r.trailer = Some(ChecksumAlgorithm::Crc32);
        r.headers.insert(
            "x-amz-decoded-content-length",
            HeaderValue::from(data.len()),
        );
        let run = |body: &str| -> Result<Vec<u8>, S3Error> {
            let (mut d, mut checks) = r.body_checks()?;
            let mut out = Vec::new();
            for b in d.feed(Bytes::copy_from_slice(body.as_bytes()))? {
                checks.update(&b);
                out.extend_from_slice(&b);
            }
            d.finish()?;
            checks.finish()?;
            Ok(out)
        };
        assert_eq!(run(&whole).unwrap(), data);
        assert_eq!(run(&head).unwrap_err().code, "IncompleteBody");
        let wrong = whole.replace(&crc, &ChecksumAlgorithm::Crc32.checksum_b64(b"other"));
        assert_eq!(run(&wrong).unwrap_err().code, "BadDigest");
    }

    #[test]
    fn every_operation_is_named_by_its_request() {
        use Endpoint::*;
        let b = Some("bkt");
        let k = Some("key");
        let cases = [
            (Method::GET, None, None, "", false, ListBuckets),
            (Method::GET, b, None, "uploads", false, ListUploads),
            (
                Method::GET,
                b,
                None,
                "list-type=2&prefix=a",
                false,
                ListObjects { v2: true },
            ),
            (Method::GET, b, None, "location", false, GetBucketLocation),
            (Method::GET, b, None, "", false, ListObjects { v2: false }),
            (Method::POST, b, None, "delete", false, DeleteObjects),
            (Method::HEAD, b, None, "", false, HeadBucket),
            (Method::PUT, b, None, "", false, CreateBucket),
            (Method::DELETE, b, None, "", false, DeleteBucket),
            (Method::GET, b, k, "uploadId=u", false, ListParts),
            (Method::GET, b, k, "", false, GetObject),
            (Method::HEAD, b, k, "partNumber=1", false, GetObject),
            (
                Method::PUT,
                b,
                k,
                "uploadId=u&partNumber=1",
                true,
                UploadPartCopy,
            ),
            (
                Method::PUT,
                b,
                k,
                "uploadId=u&partNumber=1",
                false,
                UploadPart,
            ),
            (Method::PUT, b, k, "", true, CopyObject),
            (Method::PUT, b, k, "", false, PutObject),
            (Method::DELETE, b, k, "uploadId=u", false, AbortMultipart),
            (Method::DELETE, b, k, "", false, DeleteObject),
            (Method::POST, b, k, "uploads", false, CreateMultipart),
            (Method::POST, b, k, "uploadId=u", false, CompleteMultipart),
            (
                Method::GET,
                b,
                None,
                "versions&prefix=a",
                false,
                ListVersions,
            ),
            (
                Method::GET,
                b,
                None,
                "versioning",
                false,
                GetBucketVersioning,
            ),
            (Method::GET, b, None, "acl", false, GetBucketAcl),
            (
                Method::GET,
                b,
                None,
                "lifecycle",
                false,
                BucketConfigMissing("lifecycle"),
            ),
            (
                Method::GET,
                b,
                None,
                "policy",
                false,
                BucketConfigMissing("policy"),
            ),
            (Method::GET, b, k, "acl", false, GetObjectAcl),
            (Method::GET, b, k, "tagging", false, GetObjectTagging),
            (Method::PUT, b, k, "tagging", false, PutObjectTagging),
            (Method::DELETE, b, k, "tagging", false, DeleteObjectTagging),
        ];
        for (m, bucket, key, q, copy, want) in cases {
            let r = req(m.clone(), bucket, key, q, copy);
            assert_eq!(endpoint(&r).unwrap(), want, "{m} {bucket:?} {key:?} ?{q}");
        }
        for (m, bucket, key) in [
            (Method::PUT, None, None),
            (Method::PATCH, b, None),
            (Method::POST, b, k),
        ] {
            let e = endpoint(&req(m, bucket, key, "", false)).unwrap_err();
            assert_eq!(e.code, "NotImplemented");
        }
    }
}
