//! A plaintext HTTP connection on io_uring's own socket operations, for hyper.
//!
//! The poll-I/O path (`into_poll_io`) is readiness-based: every request costs a
//! `recvfrom` that succeeds, a `writev`, and one more `recvfrom` that fails with EAGAIN
//! when hyper asks for the next request before it has arrived: three system calls. Here
//! reads and writes are io_uring operations on owned buffers: a receive waits in the
//! ring instead of failing, and the shard's one `io_uring_enter` per loop submits the
//! sends and receives of every connection together. The price is one copy each way
//! (hyper hands out borrowed slices; a ring operation needs a buffer it owns until it
//! completes), which is small beside the system calls for small responses. Large writes
//! skip the copy: one non-blocking `sendmsg` straight from hyper's slices
//! ([`nearcache_file::SocketSender`], on a duplicate of the socket's descriptor), and
//! only what the socket buffer did not take goes the ring's way.
//!
//! Ring writes are accepted as soon as they are copied and complete in the background;
//! the next write, flush or shutdown waits for the send and reports its error, so hyper's
//! flush still means "sent". A send buffer grown for a large response is released when
//! the connection waits for its next request, so idle connections hold small buffers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use reusable_box_future::ReusableLocalBoxFuture;

/// Bytes one receive asks for.
const RECV_BYTES: usize = 16 * 1024;
/// Most bytes one ring send takes from hyper; hyper offers the rest again after it.
const SEND_MAX_BYTES: usize = 256 * 1024;
/// Writes of at least this many bytes go straight from hyper's slices with one
/// non-blocking send (no copy); smaller ones are copied and sent on the ring, batched with
/// every other connection's. Measured: 4 KiB responses +25-35% requests per CPU-second
/// over readiness-based I/O; sending those directly too gave back most of the gain.
const DIRECT_MIN_BYTES: usize = 64 * 1024;
/// A send buffer larger than this is released when the connection waits for a request.
const SEND_KEEP_BYTES: usize = 64 * 1024;

type Reader = OwnedReadHalf<TcpStream>;
type Writer = OwnedWriteHalf<TcpStream>;
type RecvDone = (Reader, BufResult<usize, Vec<u8>>);
type SendDone = (Writer, BufResult<usize, Vec<u8>>);
type ShutDone = (Writer, io::Result<()>);

/// One accepted TCP connection driven by io_uring operations; see the module docs.
pub struct UringConn {
    reader: Option<Reader>,
    /// Received bytes not yet handed to hyper: `received[taken..]`.
    received: Vec<u8>,
    taken: usize,
    /// The receive in flight (its box is reused by the next one).
    recv: Option<ReusableLocalBoxFuture<RecvDone>>,
    recv_armed: bool,

    writer: Option<Writer>,
    /// The send buffer while no send is in flight.
    send_buf: Option<Vec<u8>>,
    send: Option<ReusableLocalBoxFuture<SendDone>>,
    send_armed: bool,
    shut: Option<ReusableLocalBoxFuture<ShutDone>>,
    shut_done: bool,
    /// Sends writes of `DIRECT_MIN_BYTES` or more straight from hyper's slices.
    direct: Option<nearcache_file::SocketSender>,
}

/// Puts `fut` in `slot`, reusing its box when there is one.
fn arm<T, F: Future<Output = T> + 'static>(slot: &mut Option<ReusableLocalBoxFuture<T>>, fut: F) {
    match slot {
        Some(b) => b.set(fut),
        None => *slot = Some(ReusableLocalBoxFuture::new(fut)),
    }
}

fn poll_slot<T>(
    slot: &mut Option<ReusableLocalBoxFuture<T>>,
    cx: &mut Context<'_>,
) -> Poll<Option<T>> {
    match slot {
        Some(b) => b.poll(cx).map(Some),
        None => Poll::Ready(None),
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection already shut down")
}

impl UringConn {
    pub fn new(stream: TcpStream) -> UringConn {
        let direct = nearcache_file::SocketSender::of(&stream).ok();
        let (reader, writer) = stream.into_split();
        UringConn {
            reader: Some(reader),
            received: Vec::with_capacity(RECV_BYTES),
            taken: 0,
            recv: None,
            recv_armed: false,
            writer: Some(writer),
            send_buf: Some(Vec::new()),
            send: None,
            send_armed: false,
            shut: None,
            shut_done: false,
            direct,
        }
    }

    /// Waits for the send in flight, if any, and returns its outcome.
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.send_armed {
            return Poll::Ready(Ok(()));
        }
        let Some((writer, (res, buf))) = ready!(poll_slot(&mut self.send, cx)) else {
            self.send_armed = false;
            return Poll::Ready(Err(closed()));
        };
        self.send_armed = false;
        self.writer = Some(writer);
        self.send_buf = Some(buf);
        Poll::Ready(res.map(drop))
    }

    /// Copies `bufs` (up to `SEND_MAX_BYTES`) into the send buffer and starts sending it.
    fn start_send(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.shut_done || self.shut.is_some() {
            return Err(closed());
        }
        let (Some(writer), Some(mut buf)) = (self.writer.take(), self.send_buf.take()) else {
            return Err(closed());
        };
        buf.clear();
        for b in bufs {
            let room = SEND_MAX_BYTES - buf.len();
            if room == 0 {
                break;
            }
            buf.extend_from_slice(&b[..b.len().min(room)]);
        }
        let n = buf.len();
        if n == 0 {
            self.writer = Some(writer);
            self.send_buf = Some(buf);
            return Ok(0);
        }
        arm(&mut self.send, send_all(writer, buf));
        self.send_armed = true;
        // Start it now; a send that finishes at once frees its buffer for the next write.
        if let Poll::Ready(Err(e)) = self.poll_sent(cx) {
            return Err(e);
        }
        Ok(n)
    }
}

async fn recv_into(mut reader: Reader, buf: Vec<u8>) -> RecvDone {
    let res = reader.read(buf).await;
    (reader, res)
}

async fn send_all(mut writer: Writer, buf: Vec<u8>) -> SendDone {
    let res = writer.write_all(buf).await;
    (writer, res)
}

async fn shut_down(mut writer: Writer) -> ShutDone {
    let res = writer.shutdown().await;
    (writer, res)
}

impl hyper::rt::Read for UringConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.received.len() {
                let n = buf.remaining().min(this.received.len() - this.taken);
                buf.put_slice(&this.received[this.taken..this.taken + n]);
                this.taken += n;
                return Poll::Ready(Ok(()));
            }
            if !this.recv_armed {
                let Some(reader) = this.reader.take() else {
                    return Poll::Ready(Err(closed()));
                };
                // Waiting for the next request: a large response's send buffer goes.
                if this
                    .send_buf
                    .as_ref()
                    .is_some_and(|b| b.capacity() > SEND_KEEP_BYTES)
                {
                    this.send_buf = Some(Vec::new());
                }
                let mut rbuf = std::mem::take(&mut this.received);
                rbuf.clear();
                if rbuf.capacity() < RECV_BYTES {
                    rbuf.reserve(RECV_BYTES);
                }
                this.taken = 0;
                arm(&mut this.recv, recv_into(reader, rbuf));
                this.recv_armed = true;
            }
            let Some((reader, (res, rbuf))) = ready!(poll_slot(&mut this.recv, cx)) else {
                this.recv_armed = false;
                return Poll::Ready(Err(closed()));
            };
            this.recv_armed = false;
            this.reader = Some(reader);
            this.received = rbuf;
            match res {
                // End of stream: nothing put in `buf` tells hyper so.
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl hyper::rt::Write for UringConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_sent(cx))?;
        if this.shut_done || this.shut.is_some() {
            return Poll::Ready(Err(closed()));
        }
        if let Some(direct) = &this.direct {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            if total >= DIRECT_MIN_BYTES {
                match direct.send_now(bufs) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    // The socket buffer is full: the ring waits for room.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
        Poll::Ready(this.start_send(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_sent(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_sent(cx))?;
        if this.shut_done {
            return Poll::Ready(Ok(()));
        }
        if this.shut.is_none() {
            let Some(writer) = this.writer.take() else {
                return Poll::Ready(Err(closed()));
            };
            arm(&mut this.shut, shut_down(writer));
        }
        let Some((writer, res)) = ready!(poll_slot(&mut this.shut, cx)) else {
            return Poll::Ready(Err(closed()));
        };
        this.shut = None;
        this.shut_done = true;
        this.writer = Some(writer);
        Poll::Ready(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serves `/N` with N bytes (a repeating pattern) over `UringConn`, one connection.
    fn serve_one(listener: std::net::TcpListener) {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = monoio::net::TcpListener::from_std(listener).expect("listener");
            let (stream, _) = listener.accept().await.expect("accept");
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let n: usize = req.uri().path()[1..].parse().unwrap_or(0);
                    let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(body)),
                    ))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(UringConn::new(stream), svc)
                .await;
        });
    }

    /// Reads one response with a Content-Length from `r`; returns its body.
    fn read_response(r: &mut impl Read) -> Vec<u8> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            r.read_exact(&mut byte).expect("response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("utf-8 head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).expect("response body");
        body
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn pipelined_small_and_large_responses_arrive_whole_and_in_order() {
        if !monoio::utils::detect_uring() {
            eprintln!("no io_uring here: skipped");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || serve_one(listener));
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        // Sizes on both sides of the direct-send threshold, one far above what a socket
        // buffer holds (its tail waits on the ring), and one request split mid-line.
        let sizes = [
            5usize,
            4096,
            DIRECT_MIN_BYTES - 200,
            DIRECT_MIN_BYTES,
            300_000,
            8 << 20,
            17,
        ];
        let mut reqs = Vec::new();
        for n in sizes {
            reqs.extend_from_slice(format!("GET /{n} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
        let (a, b) = reqs.split_at(10);
        c.write_all(a).unwrap();
        c.flush().unwrap();
        c.write_all(b).unwrap();
        for n in sizes {
            let body = read_response(&mut c);
            assert_eq!(body.len(), n);
            assert!(body == pattern(n), "body of /{n} differs");
        }
        // Closing our side ends the connection and the server thread.
        drop(c);
        server.join().unwrap();
    }
}
