//! The S3 API's one mapping from errors (authentication, request parsing, the shard
//! store, the origin, the shared GET path) to S3's error answer:
//! `<Error><Code/><Message/><Resource/><RequestId/></Error>` with S3's status and an
//! `x-amz-request-id` header.

use http::{header, HeaderValue, Response, StatusCode};
use nearcache_s3::OriginError;

use super::auth::AuthError;
use super::xml::escape;
use crate::body::Body;
use crate::cluster::ClusterError;
use crate::mesh::MeshError;
use crate::object::ObjectError;

#[derive(Debug, Clone)]
pub struct S3Error {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Seconds for `Retry-After` (retryable unavailability).
    pub retry_after: Option<u32>,
}

impl S3Error {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> S3Error {
        S3Error {
            status,
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// An S3 error answer of the origin, as the origin gave it.
    fn passthrough(status: u16, code: String, message: String) -> S3Error {
        S3Error {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            code,
            message,
            retry_after: None,
        }
    }

    /// 503 ServiceUnavailable with `Retry-After`: the same request may succeed later.
    pub fn service_unavailable(message: impl Into<String>) -> S3Error {
        S3Error {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                message,
            )
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
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
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
            retry_after: None,
        }
    }
}

impl From<OriginError> for S3Error {
    /// Bucket-level calls the S3 API passes to the origin.
    fn from(e: OriginError) -> Self {
        match e {
            // An error status passes through; a success status the SDK could not read
            // (moto's ListParts) is not an answer to pass on as one.
            OriginError::Service {
                status,
                code,
                message,
            } if status >= 400 => S3Error::passthrough(status, code, message),
            other => S3Error::from(ObjectError::from(other)),
        }
    }
}

/// A request document the reader cannot make sense of is S3's `MalformedXML`.
impl From<nearcache_s3proto::xml::XmlError> for S3Error {
    fn from(e: nearcache_s3proto::xml::XmlError) -> S3Error {
        S3Error::malformed_xml(e.to_string())
    }
}

impl From<MeshError> for S3Error {
    fn from(e: MeshError) -> Self {
        S3Error::service_unavailable(e.to_string())
    }
}

impl From<ObjectError> for S3Error {
    fn from(e: ObjectError) -> Self {
        let message = e.to_string();
        match e {
            ObjectError::NotFound(_) | ObjectError::Deleted { .. } => S3Error::no_such_key(),
            ObjectError::ReadOnly(m) => S3Error::access_denied(m),
            ObjectError::PreconditionFailed(_) => S3Error::precondition_failed(),
            ObjectError::RangeNotSatisfiable { .. } => S3Error::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable",
            ),
            ObjectError::TooLarge { max, .. } => S3Error::new(
                StatusCode::BAD_REQUEST,
                "EntityTooLarge",
                format!("Your proposed upload exceeds the maximum allowed size ({max} bytes)"),
            ),
            ObjectError::IncompleteBody { got, expected } => S3Error::new(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                format!(
                    "You did not provide the number of bytes specified by the Content-Length \
                     HTTP header: received {got}, {expected}"
                ),
            ),
            ObjectError::RequestTimeout(m) => S3Error::new(
                StatusCode::BAD_REQUEST,
                "RequestTimeout",
                format!(
                    "Your socket connection to the server was not read from or written to \
                     within the timeout period: {m}"
                ),
            ),
            ObjectError::InsufficientStorage(m) => {
                S3Error::new(StatusCode::INSUFFICIENT_STORAGE, "InsufficientStorage", m)
            }
            ObjectError::Superseded(m) => S3Error::new(StatusCode::CONFLICT, "OperationAborted", m),
            ObjectError::Origin {
                status,
                code,
                message,
            } => S3Error::passthrough(status, code, message),
            ObjectError::OriginUnavailable(_)
            | ObjectError::OriginWriteFailed(_)
            | ObjectError::OriginWriteTimedOut { .. }
            | ObjectError::Unavailable(_) => S3Error::service_unavailable(message),
            ObjectError::Cluster(c) => match c {
                ClusterError::BadRequest(m) => S3Error::invalid_request(m),
                ClusterError::PeerFailed { .. } => S3Error::internal(message),
                ClusterError::NoNode(_)
                | ClusterError::Quorum { .. }
                | ClusterError::QuorumUnreachable { .. }
                | ClusterError::Mesh(_) => S3Error::service_unavailable(message),
            },
            ObjectError::Storage(_)
            | ObjectError::Corrupt(_)
            | ObjectError::OriginDenied(_)
            | ObjectError::OriginOther(_) => S3Error::internal(message),
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
        // A 200 the SDK could not read is never sent on as a 200 error document.
        let e = S3Error::from(OriginError::Service {
            status: 200,
            code: "InternalError".into(),
            message: String::new(),
        });
        assert_eq!((e.status.as_u16(), e.code.as_str()), (500, "InternalError"));
        assert!(e.message.contains("could not be read"), "{}", e.message);
        let e = S3Error::from(OriginError::Service {
            status: 409,
            code: "BucketNotEmpty".into(),
            message: "m".into(),
        });
        assert_eq!(
            (e.status.as_u16(), e.code.as_str()),
            (409, "BucketNotEmpty")
        );
        let e = S3Error::from(ObjectError::PreconditionFailed("x".into()));
        assert_eq!(e.code, "PreconditionFailed");
        let e = S3Error::from(ObjectError::from(
            nearcache_shards::StoreError::InsufficientStorage {
                needed: 1,
                available: 0,
                reason: nearcache_shards::NoSpaceReason::ShardCapacity,
            },
        ));
        assert_eq!(e.status.as_u16(), 507);
        let e = S3Error::from(OriginError::Unavailable("timed out".into()));
        assert_eq!(
            (e.status.as_u16(), e.code.as_str()),
            (503, "ServiceUnavailable")
        );
        let r = e.into_response("/b/k", "RID", false);
        assert_eq!(r.headers()["retry-after"], "1");
        let e = S3Error::from(AuthError::SignatureDoesNotMatch("no".into()));
        assert_eq!(
            (e.status.as_u16(), e.code.as_str()),
            (403, "SignatureDoesNotMatch")
        );
        let r = S3Error::no_such_key().into_response("/b/k", "RID", false);
        assert_eq!(r.headers()["x-amz-request-id"], "RID");
    }
}
