//! Query parameters of the JSON admin endpoints.

use http::Request;
use hyper::body::Incoming;

use super::error::ApiError;
use crate::http_util::query_param;

/// A `true|false|1|0` query parameter, `default` when absent.
pub fn bool_param(req: &Request<Incoming>, name: &str, default: bool) -> Result<bool, ApiError> {
    match query_param(req, name).as_deref() {
        None => Ok(default),
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(ApiError::bad_request(
            "invalid parameter",
            format!("{name} must be true or false, not {v:?}"),
        )),
    }
}
