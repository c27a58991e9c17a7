//! Node-to-node HTTP/2: one persistent, multiplexed connection per peer per shard thread
//! (the connection's task lives on that thread's executor, so no locks and no Send).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use monoio::io::IntoPollIo;
use monoio_compat::hyper::{MonoioExecutor, MonoioIo, MonoioTimer};
use nearcache_membership::Member;

use super::{ClusterShard, H_CLUSTER, H_FROM};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies to peers: an empty body, our own streamed bodies, or a client's
/// request body passed through.
pub type PeerBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0} is blocked by fault injection")]
    Blocked(String),
    #[error("connecting to peer {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("peer {addr} failed the request: {detail}")]
    Request { addr: SocketAddr, detail: String },
    #[error("peer {addr} did not answer within {ms} ms")]
    Timeout { addr: SocketAddr, ms: u64 },
}

/// A failed send: the error, and the request when it never left this node (then
/// another peer can take it, body and all).
pub type SendFailure = (PeerError, Option<Request<PeerBody>>);

/// One shard thread's connections to peers, by address.
#[derive(Default)]
pub struct Pool(RefCell<HashMap<SocketAddr, SendRequest<PeerBody>>>);

pub fn empty() -> PeerBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> PeerBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn incoming(b: Incoming) -> PeerBody {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

pub fn ours(b: crate::body::Body) -> PeerBody {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

impl ClusterShard {
    /// Drops this thread's pooled connections (after a fault-injection change; other
    /// threads notice broken connections on their next request).
    pub fn forget_all(&self) {
        self.pool.0.borrow_mut().clear();
    }

    fn forget(&self, addr: SocketAddr) {
        self.pool.0.borrow_mut().remove(&addr);
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<PeerBody>, PeerError> {
        let cl = &self.cl;
        let pooled = self.pool.0.borrow().get(&addr).cloned();
        if let Some(s) = pooled {
            if !s.is_closed() {
                return Ok(s);
            }
            self.forget(addr);
        }
        let err = |detail: String| PeerError::Connect { addr, detail };
        let timeout = Duration::from_millis(cl.cfg.peer_timeout_ms.max(1));
        let stream = monoio::time::timeout(timeout, monoio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| err(format!("timed out after {} ms", timeout.as_millis())))?
            .map_err(|e| err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let io = stream.into_poll_io().map_err(|e| err(e.to_string()))?;
        let conn = match &cl.tls {
            None => handshake(MonoioIo::new(io), addr, timeout).await,
            Some(tls) => {
                // Peers are dialled by address; the verifier accepts any name the
                // cluster CA signed (see `tls`).
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
                let stream = monoio::time::timeout(timeout, connector.connect(name, io))
                    .await
                    .map_err(|_| err("TLS handshake timed out".into()))?
                    .map_err(|e| err(format!("TLS handshake: {e}")))?;
                handshake(MonoioIo::new(stream), addr, timeout).await
            }
        };
        let (sender, conn) = conn.map_err(|e| err(format!("HTTP/2 handshake: {e}")))?;
        monoio::spawn(conn);
        self.pool.0.borrow_mut().insert(addr, sender.clone());
        Ok(sender)
    }

    /// A ready connection to `to` (pooled). Failing here means nothing was sent.
    pub async fn channel(&self, to: &Member) -> Result<SendRequest<PeerBody>, PeerError> {
        let cl = &self.cl;
        if cl.is_blocked(&to.id) {
            return Err(PeerError::Blocked(to.id.clone()));
        }
        let addr = to.addr;
        let result = async {
            let mut sender = self.connect(addr).await?;
            sender.ready().await.map_err(|e| {
                self.forget(addr);
                PeerError::Connect {
                    addr,
                    detail: e.to_string(),
                }
            })?;
            Ok(sender)
        }
        .await;
        if result.is_err() {
            cl.metrics.peer_errors.fetch_add(1, Relaxed);
        }
        result
    }

    /// Sends `req` on a channel from [`channel`] and waits for the response head (bounded
    /// by the peer timeout; the body streams without a deadline).
    pub async fn send_on(
        &self,
        to: &Member,
        sender: SendRequest<PeerBody>,
        req: Request<PeerBody>,
    ) -> Result<Response<Incoming>, SendFailure> {
        let ms = self.cl.cfg.peer_timeout_ms.max(1);
        self.send_on_within(to, sender, req, ms).await
    }

    /// [`send_on`], waiting up to `ms` for the response head (a peer that answers only
    /// once its work is done, such as a job's batch).
    pub async fn send_on_within(
        &self,
        to: &Member,
        mut sender: SendRequest<PeerBody>,
        mut req: Request<PeerBody>,
        ms: u64,
    ) -> Result<Response<Incoming>, SendFailure> {
        let cl = &self.cl;
        let addr = to.addr;
        let h = req.headers_mut();
        h.insert(
            H_FROM,
            HeaderValue::from_str(&cl.self_id).expect("ulid is ascii"),
        );
        if let Ok(v) = HeaderValue::from_str(&cl.cfg.name) {
            h.insert(H_CLUSTER, v);
        }
        if let Some(v) = cl.public_url.get() {
            h.insert(super::H_PUBLIC, v.clone());
        }
        if let Some(auth) = &cl.auth {
            let (method, uri) = (req.method().clone(), req.uri().clone());
            let pq = uri.path_and_query().map_or("/", |p| p.as_str());
            auth.sign(&method, pq, req.headers_mut());
        }
        let sent = sender.try_send_request(req);
        let result = match monoio::time::timeout(Duration::from_millis(ms), sent).await {
            Err(_) => Err((PeerError::Timeout { addr, ms }, None)),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(mut e)) => {
                // A pooled connection the peer closed (e.g. it restarted) fails here.
                self.forget(addr);
                let back = e.take_message();
                Err((
                    PeerError::Request {
                        addr,
                        detail: e.into_error().to_string(),
                    },
                    back,
                ))
            }
        };
        if result.is_err() {
            cl.metrics.peer_errors.fetch_add(1, Relaxed);
        }
        result
    }

    /// [`channel`] then [`send_on`].
    pub async fn send(
        &self,
        to: &Member,
        req: Request<PeerBody>,
    ) -> Result<Response<Incoming>, PeerError> {
        let sender = self.channel(to).await?;
        self.send_on(to, sender, req).await.map_err(|(e, _)| e)
    }

    /// [`send`] with its own bound on the wait for the response head.
    pub async fn send_within(
        &self,
        to: &Member,
        req: Request<PeerBody>,
        ms: u64,
    ) -> Result<Response<Incoming>, PeerError> {
        let sender = self.channel(to).await?;
        self.send_on_within(to, sender, req, ms)
            .await
            .map_err(|(e, _)| e)
    }
}

/// A connection future that runs until the peer connection ends.
type ConnTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// HTTP/2 client handshake over `io` (plain or TLS); the connection's task is returned
/// for the caller to spawn.
async fn handshake<I>(
    io: I,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(SendRequest<PeerBody>, ConnTask), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(MonoioExecutor)
        .timer(MonoioTimer)
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(timeout)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, PeerBody>(io)
        .await?;
    Ok((
        sender,
        Box::pin(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "peer connection ended");
            }
        }),
    ))
}

/// Reads a whole (small) peer response body.
pub async fn read_body(resp: Response<Incoming>, limit: usize) -> Result<Bytes, String> {
    let body = http_body_util::Limited::new(resp.into_body(), limit);
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("reading a peer response: {e}"))
}
