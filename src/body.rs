//! The one response body type. It is `Send` so that a response produced on the owner
//! shard can travel back to the shard holding the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// Why a streamed body stopped early. Hyper aborts the connection on it, so the client
/// never mistakes a partial body for a whole one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

pub type BodySender = mpsc::Sender<Result<Bytes, BodyError>>;

pub enum Body {
    Empty,
    Full(Option<Bytes>),
    /// Chunks produced by a task (disk reader, origin stream); the length is in the headers.
    Channel {
        rx: mpsc::Receiver<Result<Bytes, BodyError>>,
        remaining: u64,
    },
    /// A body relayed from a peer node; a peer's failure mid-stream becomes a BodyError.
    Peer(hyper::body::Incoming),
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        Body::Full(Some(b.into()))
    }

    /// A streamed body of exactly `len` bytes and the sender that feeds it.
    pub fn channel(len: u64, depth: usize) -> (BodySender, Body) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        (tx, Body::Channel { rx, remaining: len })
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Channel { rx, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                match rx.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(chunk))) => {
                        if chunk.len() as u64 > *remaining {
                            *remaining = 0;
                            return Poll::Ready(Some(Err(BodyError(
                                "body producer sent more bytes than announced".into(),
                            ))));
                        }
                        *remaining -= chunk.len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                    // The producer ended before the announced length: never end cleanly.
                    Poll::Ready(None) => Poll::Ready(Some(Err(BodyError(format!(
                        "body ended {remaining} bytes short"
                    ))))),
                }
            }
            Body::Peer(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| BodyError(format!("peer stream failed: {e}"))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Channel { remaining, .. } => *remaining == 0,
            Body::Peer(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Channel { remaining, .. } => SizeHint::with_exact(*remaining),
            Body::Peer(b) => b.size_hint(),
        }
    }
}

/// Something that yields a body chunk by chunk: a stored object's reader, an origin
/// stream.
pub trait ChunkSource: 'static {
    type Error: std::fmt::Display;
    fn next_chunk(
        &mut self,
    ) -> impl std::future::Future<Output = Option<Result<Bytes, Self::Error>>>;
}

impl ChunkSource for nearcache_shards::ObjectReader {
    type Error = nearcache_shards::StoreError;
    async fn next_chunk(&mut self) -> Option<Result<Bytes, Self::Error>> {
        nearcache_shards::ObjectReader::next_chunk(self).await
    }
}

impl ChunkSource for nearcache_s3::BodyStream {
    type Error = nearcache_s3::OriginError;
    async fn next_chunk(&mut self) -> Option<Result<Bytes, Self::Error>> {
        nearcache_s3::BodyStream::next_chunk(self).await
    }
}

/// Chunks buffered between a producer task and the connection.
pub const PUMP_DEPTH: usize = 4;

/// A body of exactly `len` bytes fed by a task on this thread that pumps `source` (after
/// `first`, a chunk already read). A source error ends the body with a [`BodyError`]
/// saying `what` failed, so the client never takes a partial body for a whole one.
pub fn pump<S: ChunkSource>(
    len: u64,
    first: Option<Bytes>,
    mut source: S,
    what: &'static str,
) -> Body {
    let (tx, body) = Body::channel(len, PUMP_DEPTH);
    monoio::spawn(async move {
        if let Some(first) = first {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
        }
        while let Some(chunk) = source.next_chunk().await {
            let item = chunk.map_err(|e| BodyError(format!("{what} failed mid-stream: {e}")));
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    body
}

/// A whole-body response of `content_type`.
pub fn text(
    status: http::StatusCode,
    content_type: &'static str,
    body: String,
) -> http::Response<Body> {
    let mut r = http::Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// A JSON response.
pub fn json(status: http::StatusCode, v: &serde_json::Value) -> http::Response<Body> {
    text(status, "application/json", v.to_string())
}

/// A JSON response of a typed value, serialized without a `serde_json::Value` in between
/// (change feeds and batched copies are megabytes).
pub fn json_of<T: serde::Serialize>(status: http::StatusCode, v: &T) -> http::Response<Body> {
    let body = serde_json::to_string(v).expect("plain data serializes");
    text(status, "application/json", body)
}
