//! The JSON edges' (native, admin, node-to-node) one mapping from errors to an HTTP
//! status and a body `{"error": "...", "detail": "..."}`.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::Body;
use crate::cluster::ClusterError;
use crate::http_util::{http_date, SmallBodyError};
use crate::mesh::MeshError;
use crate::object::ObjectError;

/// Header on a 404 for a deleted id.
pub const X_META_DELETED: &str = "x-meta-deleted";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short, stable error name.
    pub error: &'static str,
    /// What exactly was wrong, for a human.
    pub detail: String,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
            headers: Vec::new(),
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

impl From<ObjectError> for ApiError {
    fn from(e: ObjectError) -> Self {
        let detail = e.to_string();
        let retry = e.is_retryable();
        let a = match e {
            ObjectError::NotFound(d) => ApiError::not_found(d),
            ObjectError::Deleted { key, at_ms } => {
                ApiError::not_found(format!("id {key} was deleted at {}", http_date(at_ms)))
                    .with_header(
                        header::HeaderName::from_static(X_META_DELETED),
                        HeaderValue::from_static("true"),
                    )
            }
            ObjectError::PreconditionFailed(d) => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition failed", d)
            }
            ObjectError::RangeNotSatisfiable { size } => ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range not satisfiable",
                detail,
            )
            .with_header(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
            ),
            ObjectError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "object too large", detail)
            }
            ObjectError::IncompleteBody { .. } => ApiError::bad_request("incomplete body", detail),
            ObjectError::RequestTimeout(_) => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request timeout", detail)
            }
            ObjectError::InsufficientStorage(d) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient storage", d)
            }
            ObjectError::Storage(_) | ObjectError::Corrupt(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage error", detail)
            }
            ObjectError::Superseded(d) => ApiError::new(StatusCode::CONFLICT, "superseded", d),
            ObjectError::OriginUnavailable(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "origin unavailable", detail)
            }
            ObjectError::OriginDenied(_) | ObjectError::OriginOther(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "origin error", detail)
            }
            ObjectError::Origin { status, .. } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                "origin error",
                detail,
            ),
            ObjectError::OriginWriteFailed(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "origin write failed", detail)
            }
            ObjectError::OriginWriteTimedOut { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "origin timeout", detail)
            }
            ObjectError::Cluster(c) => return c.into(),
            ObjectError::Unavailable(d) => ApiError::unavailable(d),
            ObjectError::ReadOnly(d) => ApiError::new(StatusCode::FORBIDDEN, "read-only", d),
        };
        if retry && a.status.is_server_error() {
            a.with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        } else {
            a
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let detail = e.to_string();
        match e {
            ClusterError::PeerFailed { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "peer error", detail)
            }
            ClusterError::BadRequest(_) => ApiError::bad_request("invalid request", detail),
            ClusterError::NoNode(_)
            | ClusterError::Quorum { .. }
            | ClusterError::QuorumUnreachable { .. }
            | ClusterError::Mesh(_) => ApiError::unavailable(detail)
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")),
        }
    }
}

impl From<MeshError> for ApiError {
    fn from(e: MeshError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

impl From<SmallBodyError> for ApiError {
    fn from(e: SmallBodyError) -> Self {
        match e {
            SmallBodyError::TooLarge(_) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large",
                e.to_string(),
            ),
            SmallBodyError::Incomplete(_) => {
                ApiError::bad_request("incomplete body", e.to_string())
            }
        }
    }
}
