//! The response head of an S3 read, rendered on the owner shard from the object's
//! metadata (shared by plain and `partNumber` reads).

use http::{header, HeaderName, HeaderValue};

use crate::http_util::{answer_head, Answer};
use crate::object::read::{ObjectView, Render};

/// S3's response head: ETag, Last-Modified, x-amz-meta-*, stored headers, then the
/// request's `response-*` overrides.
pub(crate) struct S3Render {
    pub overrides: Vec<(HeaderName, HeaderValue)>,
    /// `x-amz-mp-parts-count` of a `partNumber` read (else the origin's, if it said).
    pub parts_count: Option<u32>,
}

impl Render for S3Render {
    fn head(&self, v: &ObjectView<'_>, answer: &Answer) -> http::response::Builder {
        let mut b = v.head_builder().header(
            header::CONTENT_TYPE,
            v.content_type.unwrap_or("application/octet-stream"),
        );
        for (k, val) in v.user_meta {
            if let Ok(val) = HeaderValue::from_str(val) {
                b = b.header(format!("x-amz-meta-{k}"), val);
            }
        }
        for (k, val) in v.headers {
            if let Ok(val) = HeaderValue::from_str(val) {
                b = b.header(k.as_str(), val);
            }
        }
        if let Some(n) = self.parts_count.or(v.parts_count) {
            b = b.header("x-amz-mp-parts-count", n);
        }
        if let Some(h) = b.headers_mut() {
            for (k, val) in &self.overrides {
                h.insert(k.clone(), val.clone());
            }
        }
        answer_head(b, v.size, answer)
    }
}
