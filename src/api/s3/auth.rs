//! AWS Signature Version 4 verification for the S3 API: the sans-IO code lives in the
//! `nearcache-s3proto` crate (`src/s3proto`); this module re-exports it for the handlers.

pub use nearcache_s3proto::auth::*;
