//! The S3 API's one mapping from errors (authentication, request parsing, the shard
//! store, the origin, the shared GET path) to S3's error answer:
//! `<Error><Code/><Message/><Resource/><RequestId/></Error>` with S3's status and an
//! `x-amz-request-id` header.

use http::{header, HeaderValue, Response, StatusCode};
use nearcache_s3::OriginError;
use nearcache_shards::StoreError;

use super::auth::AuthError;
use super::xml::escape;
use crate::body::Body;
use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct S3Error {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl S3Error {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> S3Error {
        S3Error {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    pub fn access_denied(message: impl Into<String>) -> S3Error {
        Self::new(StatusCode::FORBIDDEN, "AccessDenied", message)
    }

    pub fn invalid_argument(message: impl Into<String>) -> S3Error {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    pub fn invalid_request(message: impl Into<String>) -> S3Error {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    pub fn malformed_xml(message: impl Into<String>) -> S3Error {
        Self::new(StatusCode::BAD_REQUEST, "MalformedXML", message)
    }

    pub fn no_such_key() -> S3Error {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        )
    }

    pub fn not_implemented(what: impl Into<String>) -> S3Error {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!(
                "A header or operation you provided implies functionality that is not implemented: {}",
                what.into()
            ),
        )
    }

    pub fn precondition_failed() -> S3Error {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        )
    }

    pub fn internal(message: impl Into<String>) -> S3Error {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The XML answer. HEAD answers carry no body (as S3's), only the status and headers.
    pub fn into_response(self, resource: &str, request_id: &str, head: bool) -> Response<Body> {
        let body = if head || self.status == StatusCode::NOT_MODIFIED {
            Body::Empty
        } else {
            Body::full(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message>\
                 <Resource>{}</Resource><RequestId>{}</RequestId></Error>",
                escape(&self.code),
                escape(&self.message),
                escape(resource),
                escape(request_id)
            ))
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-amz-request-id", v);
        }
        if self.status.is_server_error() || self.code == "IncompleteBody" {
            // The body may be unread: don't let the client reuse the connection.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<AuthError> for S3Error {
    fn from(e: AuthError) -> Self {
        S3Error {
            status: e.status(),
            code: e.code().to_owned(),
            message: e.message(),
        }
    }
}

impl From<StoreError> for S3Error {
    fn from(e: StoreError) -> Self {
        S3Error::from(ApiError::from(e))
    }
}

impl From<OriginError> for S3Error {
    fn from(e: OriginError) -> Self {
        match e {
            OriginError::NotFound => S3Error::no_such_key(),
            OriginError::InvalidRange => S3Error::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable",
            ),
            OriginError::Service {
                status,
                code,
                message,
            } => S3Error {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                code,
                message,
            },
            other => S3Error::from(ApiError::from(other)),
        }
    }
}

/// Errors of the shared GET path and the store arrive as the native [`ApiError`]: map by
/// the origin's code when there is one, else by status.
impl From<ApiError> for S3Error {
    fn from(e: ApiError) -> Self {
        if let Some(code) = e.s3_code {
            return S3Error {
                status: e.status,
                code,
                message: e.detail,
            };
        }
        let code = match e.status.as_u16() {
            400 => "InvalidRequest",
            404 => return S3Error::no_such_key(),
            412 => return S3Error::precondition_failed(),
            413 => "EntityTooLarge",
            416 => "InvalidRange",
            409 => "OperationAborted",
            501 => "NotImplemented",
            503 | 504 => "ServiceUnavailable",
            507 => "InsufficientStorage",
            _ => "InternalError",
        };
        let status = match e.status.as_u16() {
            502 => StatusCode::INTERNAL_SERVER_ERROR,
            504 => StatusCode::SERVICE_UNAVAILABLE,
            _ => e.status,
        };
        S3Error {
            status,
            code: code.to_owned(),
            message: e.detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_s3_codes() {
        let e = S3Error::from(OriginError::NotFound);
        assert_eq!((e.status.as_u16(), e.code.as_str()), (404, "NoSuchKey"));
        let e = S3Error::from(OriginError::Service {
            status: 409,
            code: "BucketNotEmpty".into(),
            message: "m".into(),
        });
        assert_eq!(
            (e.status.as_u16(), e.code.as_str()),
            (409, "BucketNotEmpty")
        );
        let e = S3Error::from(ApiError::new(StatusCode::PRECONDITION_FAILED, "x", "y"));
        assert_eq!(e.code, "PreconditionFailed");
        let e = S3Error::from(StoreError::InsufficientStorage {
            needed: 1,
            available: 0,
        });
        assert_eq!(e.status.as_u16(), 507);
        let e = S3Error::from(AuthError::SignatureDoesNotMatch("no".into()));
        assert_eq!(
            (e.status.as_u16(), e.code.as_str()),
            (403, "SignatureDoesNotMatch")
        );
        let r = S3Error::no_such_key().into_response("/b/k", "RID", false);
        assert_eq!(r.headers()["x-amz-request-id"], "RID");
    }
}
