//! The API edges. Each parses its requests into the object service's types, renders
//! the answers, and maps errors to its own, once:
//! - [`native`]: objstore's native API (`/api/v1`), JSON errors ([`error::ApiError`]);
//! - [`admin`]: health, metrics, stats, cluster view, on the same listener, and the
//!   status page ([`ui`]);
//! - [`s3`]: the S3-compatible API, S3's XML errors;
//! - [`peer`]: the node-to-node API on the private cluster address;
//! - [`auth`]: bearer tokens (JWT), for every edge that serves clients.

pub mod admin;
pub mod auth;
pub mod backends;
pub mod cachenator;
pub mod error;
pub mod native;
pub mod ops;
pub mod params;
pub mod peer;
pub mod s3;
pub mod ui;

use std::rc::Rc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::ctx::ShardCtx;

/// The public listener: the admin routes, else the native API.
pub async fn public(ctx: Rc<ShardCtx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if admin::serves(path) {
        admin::handle(ctx, req).await
    } else if ops::serves(path) {
        ops::handle(ctx, req).await
    } else if cachenator::serves(path) {
        cachenator::handle(ctx, req).await
    } else {
        native::handle(ctx, req).await
    }
}
