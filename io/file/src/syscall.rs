//! Plain-syscall device: std files, pread/pwrite. Blocking: on a reactor thread each
//! call stalls the core for one disk operation. For tests and machines without io_uring.
#![allow(
    clippy::disallowed_methods,
    reason = "the plain-syscall device is the blocking fallback (no io_uring): it blocks by design"
)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{is_einval, AlignedBuf, Device, DeviceFile, DeviceKind, ALIGN};

#[derive(Debug)]
pub struct SyscallDevice {
    direct: AtomicBool,
}

impl SyscallDevice {
    pub fn new() -> SyscallDevice {
        SyscallDevice {
            direct: AtomicBool::new(true),
        }
    }

    fn open_with(&self, path: &Path, create: bool) -> io::Result<SyscallFile> {
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
            match opts(true).open(path) {
                Ok(file) => return Ok(SyscallFile { file, direct: true }),
                Err(e) if is_einval(&e) => {
                    tracing::warn!(path = %path.display(), "O_DIRECT refused; using buffered I/O");
                    self.direct.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(SyscallFile {
            file: opts(false).open(path)?,
            direct: false,
        })
    }
}

impl Default for SyscallDevice {
    fn default() -> Self {
        SyscallDevice::new()
    }
}

#[derive(Debug)]
pub struct SyscallFile {
    file: File,
    direct: bool,
}

impl Device for SyscallDevice {
    type File = SyscallFile;

    fn active_kind(&self) -> DeviceKind {
        DeviceKind::Syscall
    }

    fn direct_io(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    async fn create(&self, path: &Path) -> io::Result<SyscallFile> {
        self.open_with(path, true)
    }

    async fn open(&self, path: &Path) -> io::Result<SyscallFile> {
        self.open_with(path, false)
    }
}

impl DeviceFile for SyscallFile {
    async fn write_at(&self, buf: AlignedBuf, pos: u64) -> (io::Result<usize>, AlignedBuf) {
        let res = self.file.write_at(buf.as_slice(), pos);
        (res, buf)
    }

    async fn write_all_at(&self, buf: AlignedBuf, pos: u64) -> (io::Result<()>, AlignedBuf) {
        let res = self.file.write_all_at(buf.as_slice(), pos);
        (res, buf)
    }

    async fn read_at(&self, mut buf: AlignedBuf, pos: u64) -> (io::Result<usize>, AlignedBuf) {
        let res = self.file.read_at(buf.full_mut(), pos);
        buf.set_len(*res.as_ref().unwrap_or(&0));
        (res, buf)
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
            match self
                .file
                .read_at(&mut buf.full_mut()[total..want], pos + total as u64)
            {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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
        self.file.sync_data()
    }

    fn is_direct(&self) -> bool {
        self.direct
    }
}
