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
        let mut b = v.head_builder();
        let hv = v.head_values();
        if let Some(h) = b.headers_mut() {
            h.insert(header::CONTENT_TYPE, v.content_type_value());
            for (k, val) in v.user_meta {
                let name = HeaderName::from_bytes(format!("x-amz-meta-{k}").as_bytes());
                if let (Ok(name), Ok(val)) = (name, HeaderValue::from_str(val)) {
                    h.append(name, val);
                }
            }
            for (k, val) in &hv.stored_headers {
                h.append(k.clone(), val.clone());
            }
            if let Some(n) = self.parts_count.or(v.parts_count) {
                h.insert(
                    HeaderName::from_static("x-amz-mp-parts-count"),
                    HeaderValue::from(n),
                );
            }
            for (k, val) in &self.overrides {
                h.insert(k.clone(), val.clone());
            }
        }
        answer_head(b, v.size, answer)
    }
}
