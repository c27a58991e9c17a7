//! Bearer tokens (JWT) on the native API, the admin routes and the cachenator-compatible
//! endpoints. With `--jwt-key` every request needs `Authorization: Bearer <JWT>` whose
//! claims grant what it does (see `crate::jwt`), except `/healthz` (and `/metrics` unless
//! `auth.metrics_token`). Refusals are 401 (no valid token, with `WWW-Authenticate`) or
//! 403 (a valid token that does not grant the request), with a JSON reason that never
//! repeats the token. Without `--jwt-key` everything passes.
//!
//! An edge calls [`authorize`] with what the request does, before any work:
//!
//! ```ignore
//! let claims = auth::authorize(&ctx, req.headers(), Action::Read, bucket, key)?;
//! ```
//!
//! Requests another node proxied here were checked by that node (node-to-node
//! requests are authenticated with the cluster secret instead).

use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::error::ApiError;
use crate::ctx::{Node, ShardCtx};
pub use crate::jwt::{Action, Claims, JwtError as AuthError};
use crate::metrics::{Exposition, Family, Kind};

/// Checks the request's bearer token for `action` on `key` of `bucket` (`""` for
/// routes about no bucket or key). `Ok(None)` when JWT is off; each checked request is
/// counted once.
pub fn authorize(
    ctx: &ShardCtx,
    headers: &HeaderMap,
    action: Action,
    bucket: &str,
    key: &str,
) -> Result<Option<Claims>, AuthError> {
    let Some(v) = &ctx.node.jwt else {
        return Ok(None);
    };
    let r = verify(v, headers).and_then(|c| c.allows(action, bucket, key).map(|()| c));
    v.record(&r);
    r.map(Some)
}

/// Checks only that the request carries a valid token (routes that touch no object).
pub fn authenticate(ctx: &ShardCtx, headers: &HeaderMap) -> Result<Option<Claims>, AuthError> {
    let Some(v) = &ctx.node.jwt else {
        return Ok(None);
    };
    let r = verify(v, headers);
    v.record(&r);
    r.map(Some)
}

/// Whether requests need a token.
pub fn enabled(ctx: &ShardCtx) -> bool {
    ctx.node.jwt.is_some()
}

fn verify(v: &crate::jwt::Verifier, headers: &HeaderMap) -> Result<Claims, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(AuthError::Malformed(
            "more than one Authorization header".into(),
        ));
    }
    v.verify(first.map(HeaderValue::as_bytes))
}

/// The bucket the native API's objects live in (the origin bucket; `""` for the
/// embedded origin), which a token's `bucket` claim is matched against.
pub fn native_bucket(node: &Node) -> &str {
    node.cfg.origin.bucket.as_deref().unwrap_or("")
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::Forbidden(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
            _ => {
                let challenge = match e {
                    AuthError::Missing => "Bearer",
                    _ => "Bearer error=\"invalid_token\"",
                };
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()).with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                )
            }
        }
    }
}

const REQUESTS: Family = Family::new(
    "nearcache_auth_requests_total",
    Kind::Counter,
    "Requests checked for a bearer token, by result (accepted, or the reason of the refusal).",
);

/// The auth families (only when JWT is on).
pub fn render_metrics(node: &Node, out: &mut Exposition) {
    let Some(v) = &node.jwt else { return };
    let (accepted, refused) = v.counts();
    out.family(&REQUESTS);
    out.sample(REQUESTS.name, "result=\"accepted\"", accepted);
    for (reason, n) in refused {
        out.sample(REQUESTS.name, &format!("result=\"{reason}\""), n);
    }
}
