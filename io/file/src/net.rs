//! One socket call for the HTTP edge: a send that never waits.
//!
//! io_uring sends need a buffer they own until the completion, so a large response
//! would be copied once more on its way out. [`SocketSender`] sends straight from the
//! caller's slices instead, and returns at once with what the socket buffer took
//! (`MSG_DONTWAIT`): the caller owns the waiting, on the ring.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// At most this many slices go in one `sendmsg` (Linux's IOV_MAX is 1024).
const MAX_SLICES: usize = 64;

/// A second descriptor of a connected socket, for sends that return at once.
#[derive(Debug)]
pub struct SocketSender(OwnedFd);

impl SocketSender {
    /// Duplicates `sock`'s descriptor (close-on-exec). Closing either leaves the other
    /// open; the connection ends when both are closed, or at `shutdown`.
    pub fn of(sock: &impl AsRawFd) -> io::Result<SocketSender> {
        // SAFETY: `sock` is borrowed for this call, so its descriptor is open;
        // F_DUPFD_CLOEXEC only reads it and returns a new descriptor or -1.
        let fd = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by fcntl, is open and owned by nothing else.
        Ok(SocketSender(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends what the socket takes now of `bufs`, in order, without waiting: the byte
    /// count, or `WouldBlock` when the socket buffer is full. Never raises SIGPIPE.
    pub fn send_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(MAX_SLICES)];
        let msg = libc::msghdr {
            msg_name: std::ptr::null_mut(),
            msg_namelen: 0,
            // IoSlice is guaranteed ABI-compatible with iovec on Unix.
            msg_iov: bufs.as_ptr() as *mut libc::iovec,
            msg_iovlen: bufs.len() as _,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        loop {
            // SAFETY: the descriptor is open (owned by self); `msg` points at `bufs`'
            // iovecs, which live for the call, and the kernel only reads them.
            let n = unsafe {
                libc::sendmsg(
                    self.0.as_raw_fd(),
                    &msg,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn sends_slices_in_order_and_reports_a_full_buffer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let sender = SocketSender::of(&client).unwrap();
        let n = sender
            .send_now(&[IoSlice::new(b"head "), IoSlice::new(b"body")])
            .unwrap();
        assert_eq!(n, 9);
        let mut got = [0u8; 9];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"head body");
        // Nobody reads: the socket buffer fills and the send says so instead of waiting.
        let chunk = vec![7u8; 1 << 20];
        let mut full = false;
        for _ in 0..1024 {
            match sender.send_now(&[IoSlice::new(&chunk)]) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    full = true;
                    break;
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
        assert!(full, "the socket never reported a full buffer");
    }
}
