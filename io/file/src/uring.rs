//! io_uring device: monoio files. On a monoio runtime that fell back to its legacy
//! (epoll) driver the same calls still work, as blocking syscalls inside monoio.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::fs::{File, OpenOptions};

use crate::{is_einval, AlignedBuf, Device, DeviceFile, DeviceKind, ALIGN};

#[derive(Debug)]
pub struct UringDevice {
    direct: AtomicBool,
}

impl UringDevice {
    pub fn new() -> UringDevice {
        UringDevice {
            direct: AtomicBool::new(true),
        }
    }

    async fn open_with(&self, path: &Path, create: bool) -> io::Result<UringFile> {
        let opts = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true);
            if create {
                o.write(true).create(true).truncate(true);
            }
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o
        };
        if self.direct.load(Ordering::Relaxed) {
            match opts(true).open(path).await {
                Ok(file) => return Ok(UringFile { file, direct: true }),
                Err(e) if is_einval(&e) => {
                    tracing::warn!(path = %path.display(), "O_DIRECT refused; using buffered I/O");
                    self.direct.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(UringFile {
            file: opts(false).open(path).await?,
            direct: false,
        })
    }
}

impl Default for UringDevice {
    fn default() -> Self {
        UringDevice::new()
    }
}

/// A monoio file. Closed (synchronously, by monoio) when dropped.
#[derive(Debug)]
pub struct UringFile {
    file: File,
    direct: bool,
}

impl Device for UringDevice {
    type File = UringFile;

    fn active_kind(&self) -> DeviceKind {
        DeviceKind::Uring
    }

    fn direct_io(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        // unlinkat on the ring: the shard thread does not block on the file system.
        monoio::fs::remove_file(path).await
    }

    async fn create(&self, path: &Path) -> io::Result<UringFile> {
        self.open_with(path, true).await
    }

    async fn open(&self, path: &Path) -> io::Result<UringFile> {
        self.open_with(path, false).await
    }
}

impl DeviceFile for UringFile {
    async fn write_at(&self, buf: AlignedBuf, pos: u64) -> (io::Result<usize>, AlignedBuf) {
        self.file.write_at(buf, pos).await
    }

    async fn write_all_at(&self, mut buf: AlignedBuf, pos: u64) -> (io::Result<()>, AlignedBuf) {
        let len = buf.len();
        let mut done = 0;
        while done < len {
            let (res, slice) = self
                .file
                .write_at(buf.slice(done..len), pos + done as u64)
                .await;
            buf = slice.into_inner();
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    async fn read_at(&self, mut buf: AlignedBuf, pos: u64) -> (io::Result<usize>, AlignedBuf) {
        buf.clear();
        self.file.read_at(buf, pos).await
    }

    async fn read_full_at(
        &self,
        mut buf: AlignedBuf,
        pos: u64,
        want: usize,
    ) -> (io::Result<usize>, AlignedBuf) {
        assert!(
            want <= buf.capacity(),
            "read_full_at: want {want} > capacity"
        );
        let mut total = 0;
        while total < want {
            let (res, slice) = self
                .file
                .read_at(buf.slice_mut(total..want), pos + total as u64)
                .await;
            buf = slice.into_inner();
            match res {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.set_len(total);
                    return (Err(e), buf);
                }
            }
            if self.direct && total % ALIGN != 0 {
                // A short O_DIRECT read ends at EOF; the next offset would be unaligned.
                break;
            }
        }
        buf.set_len(total);
        (Ok(total), buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data().await
    }

    fn is_direct(&self) -> bool {
        self.direct
    }
}
