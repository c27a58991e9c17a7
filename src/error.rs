//! The edge's one mapping from errors to an HTTP status and a JSON body
//! `{"error": "...", "detail": "..."}`.

use http::{header, HeaderValue, Response, StatusCode};
use nearcache_s3::OriginError;
use nearcache_shards::StoreError;

use crate::body::Body;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short, stable error name.
    pub error: &'static str,
    /// What exactly was wrong, for a human.
    pub detail: String,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The S3 error code, when the origin gave one (S3 API passthrough).
    pub s3_code: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
            headers: Vec::new(),
            s3_code: None,
        }
    }

    pub fn bad_request(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not found", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.error, "detail": self.detail }).to_string();
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in self.headers {
            h.insert(k, v);
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::InsufficientStorage { .. } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient storage",
                e.to_string(),
            ),
            StoreError::NotFound => ApiError::not_found(e.to_string()),
            StoreError::Superseded => {
                ApiError::new(StatusCode::CONFLICT, "superseded", e.to_string())
            }
            StoreError::Closed => ApiError::unavailable(e.to_string()),
            StoreError::Corrupt { .. } | StoreError::Io(_) | StoreError::Journal(_) => {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage error",
                    e.to_string(),
                )
            }
        }
    }
}

impl From<OriginError> for ApiError {
    fn from(e: OriginError) -> Self {
        match &e {
            OriginError::NotFound => ApiError::not_found("object not found here or in the origin"),
            OriginError::InvalidRange => ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range not satisfiable",
                e.to_string(),
            ),
            OriginError::Unavailable(_) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "origin unavailable",
                e.to_string(),
            ),
            OriginError::Denied(_) | OriginError::Rejected(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "origin error", e.to_string())
            }
            OriginError::Closed => ApiError::unavailable(e.to_string()),
            OriginError::Service { status, code, .. } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut a = ApiError::new(status, "origin error", e.to_string());
                a.s3_code = Some(code.clone());
                a
            }
        }
    }
}
