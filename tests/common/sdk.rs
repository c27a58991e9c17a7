//! An aws-sdk-s3 client for nearcache's S3 API (or the test S3 server), on its own
//! runtime, for blocking tests.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use super::{TestNode, S3_ACCESS_KEY, S3_SECRET_KEY};

/// An SDK client for nearcache's S3 API, on its own runtime.
pub struct Sdk {
    pub rt: tokio::runtime::Runtime,
    pub c: Client,
}

impl Sdk {
    pub fn new(endpoint: &str, ak: &str, sk: &str) -> Sdk {
        Self::with(endpoint, ak, sk, |b| b)
    }

    pub fn with(
        endpoint: &str,
        ak: &str,
        sk: &str,
        tweak: impl FnOnce(aws_sdk_s3::config::Builder) -> aws_sdk_s3::config::Builder,
    ) -> Sdk {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
            .force_path_style(true);
        let c = Client::from_conf(tweak(conf).build());
        Sdk { rt, c }
    }

    pub fn node(node: &TestNode) -> Sdk {
        Self::new(&node.s3_base, S3_ACCESS_KEY, S3_SECRET_KEY)
    }

    /// A client straight to the test S3 server, to compare with.
    pub fn origin() -> Sdk {
        let t = nearcache_s3::testutil::s3_target();
        Self::new(&t.endpoint, &t.access_key, &t.secret_key)
    }

    pub fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> (Vec<u8>, aws_sdk_s3::operation::get_object::GetObjectOutput) {
        self.run(async {
            let mut o = self
                .c
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
            let body = std::mem::replace(&mut o.body, ByteStream::from_static(b""));
            let b = body.collect().await.unwrap().into_bytes().to_vec();
            (b, o)
        })
    }

    pub fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> String {
        self.run(
            self.c
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send(),
        )
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"))
        .e_tag()
        .unwrap()
        .to_owned()
    }

    /// Uploads `parts` as one multipart object; returns the object's ETag.
    pub fn multipart(&self, bucket: &str, key: &str, parts: &[&[u8]]) -> String {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        self.run(async {
            let id = create_upload(&self.c, bucket, key).await;
            let mut done = Vec::new();
            for (n, p) in (1..).zip(parts) {
                let e = self
                    .c
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n)
                    .body(p.to_vec().into())
                    .send()
                    .await
                    .unwrap()
                    .e_tag()
                    .unwrap()
                    .to_owned();
                done.push(CompletedPart::builder().part_number(n).e_tag(e).build());
            }
            let all = CompletedMultipartUpload::builder().set_parts(Some(done));
            self.c
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .multipart_upload(all.build())
                .send()
                .await
                .unwrap()
                .e_tag()
                .unwrap()
                .to_owned()
        })
    }

    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delim: Option<&str>,
    ) -> (Vec<String>, Vec<String>) {
        let o = self
            .run(
                self.c
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_delimiter(delim.map(str::to_owned))
                    .send(),
            )
            .unwrap();
        (
            o.contents()
                .iter()
                .map(|o| o.key().unwrap().to_owned())
                .collect(),
            o.common_prefixes()
                .iter()
                .map(|p| p.prefix().unwrap().to_owned())
                .collect(),
        )
    }
}

/// CreateMultipartUpload; returns the upload id.
pub async fn create_upload(c: &Client, bucket: &str, key: &str) -> String {
    c.create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned()
}

/// (HTTP status, S3 error code) of a failed call.
pub fn status_code<E: ProvideErrorMetadata + std::fmt::Debug>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> (u16, String) {
    let status = e
        .raw_response()
        .map(|r| r.status().as_u16())
        .unwrap_or_else(|| panic!("no response: {e:?}"));
    (status, e.code().unwrap_or_default().to_owned())
}
