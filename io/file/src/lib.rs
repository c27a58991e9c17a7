//! # nearcache-file: disk devices
//!
//! Goals: aligned, owned-buffer file I/O for the shard engine, through one [`Device`]
//! trait with an io_uring implementation (monoio, O_DIRECT) and a plain-syscall one
//! (pread/pwrite) that tests and machines without io_uring can pick.
//! Also the one socket call the HTTP edge cannot make safely: a send straight from
//! borrowed slices that never waits ([`SocketSender`]).
//! Non-goals: caching, file formats, socket I/O beyond that send. All `unsafe` of the
//! engine lives here.
//!
//! Every operation takes an [`AlignedBuf`] by value and hands it back with the result
//! (`(io::Result<_>, AlignedBuf)`), the io_uring ownership model: the kernel may write
//! into the buffer until the completion arrives, so the buffer must not be borrowed.
//!
//! Files are opened with `O_DIRECT`. Filesystems that refuse it (tmpfs answers
//! `EINVAL`) get buffered I/O instead; the device remembers that and says so through
//! [`Device::direct_io`]. Callers always pass 4096-aligned buffers, lengths and offsets
//! (padding the tail of a file is the caller's job), so both modes behave the same.

mod buf;
mod lmdb;
mod net;
mod space;
mod syscall;
mod uring;

use std::io;
use std::path::Path;

pub use buf::{align_up, align_up_u64, AlignedBuf, ALIGN};
pub use lmdb::open_lmdb_env;
pub use net::SocketSender;
pub use space::{fs_space, FsSpace};
pub use syscall::{SyscallDevice, SyscallFile};
pub use uring::{UringDevice, UringFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// io_uring through monoio when the runtime has it, else plain syscalls.
    #[default]
    Auto,
    Uring,
    Syscall,
}

/// A place to create, open and remove files. Futures are `!Send`: a device is used from
/// its shard's monoio thread only.
#[expect(
    async_fn_in_trait,
    reason = "the engine is thread-per-core; futures need not be Send"
)]
pub trait Device {
    type File: DeviceFile;

    /// Which implementation this is (never `Auto`).
    fn active_kind(&self) -> DeviceKind;

    /// False once a filesystem refused O_DIRECT and files fell back to buffered I/O.
    fn direct_io(&self) -> bool;

    /// Creates (or truncates) a file for writing and reading.
    async fn create(&self, path: &Path) -> io::Result<Self::File>;

    /// Opens an existing file for reading.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;

    /// Removes a file. The plain-syscall device blocks here (as for every other call).
    #[expect(
        clippy::disallowed_methods,
        reason = "the syscall device is the blocking fallback; the io_uring one overrides this"
    )]
    async fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// An open file. Offsets, lengths and buffer addresses must be 4096-aligned.
#[expect(
    async_fn_in_trait,
    reason = "the engine is thread-per-core; futures need not be Send"
)]
pub trait DeviceFile {
    /// Writes `buf.as_slice()` at `pos` (one call: may be short).
    async fn write_at(&self, buf: AlignedBuf, pos: u64) -> (io::Result<usize>, AlignedBuf);

    /// Writes all of `buf.as_slice()` at `pos`.
    async fn write_all_at(&self, buf: AlignedBuf, pos: u64) -> (io::Result<()>, AlignedBuf);

    /// Reads into the whole capacity of `buf` from `pos` (one call: may be short);
    /// on success `buf.len()` is the number of bytes read.
    async fn read_at(&self, buf: AlignedBuf, pos: u64) -> (io::Result<usize>, AlignedBuf);

    /// Reads `want` bytes (`want <= buf.capacity()`) from `pos`, stopping early only at
    /// the end of the file. Returns the count read, also left in `buf.len()`.
    async fn read_full_at(
        &self,
        buf: AlignedBuf,
        pos: u64,
        want: usize,
    ) -> (io::Result<usize>, AlignedBuf);

    /// fdatasync.
    async fn sync_data(&self) -> io::Result<()>;

    /// True when this file was opened with O_DIRECT.
    fn is_direct(&self) -> bool;
}

fn is_einval(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// A device picked at run time, so the engine isn't generic over it.
#[derive(Debug)]
pub enum AnyDevice {
    Uring(UringDevice),
    Syscall(SyscallDevice),
}

impl AnyDevice {
    /// `Auto` picks io_uring when the kernel offers the ops monoio needs (the same test
    /// monoio's `FusionDriver` uses to choose its io_uring driver), else plain syscalls.
    pub fn new(kind: DeviceKind) -> AnyDevice {
        match kind {
            DeviceKind::Uring => AnyDevice::Uring(UringDevice::new()),
            DeviceKind::Syscall => AnyDevice::Syscall(SyscallDevice::new()),
            DeviceKind::Auto => {
                if monoio::utils::detect_uring() {
                    AnyDevice::Uring(UringDevice::new())
                } else {
                    tracing::warn!(
                        "io_uring unavailable: file I/O uses blocking pread/pwrite on the reactor thread"
                    );
                    AnyDevice::Syscall(SyscallDevice::new())
                }
            }
        }
    }
}

/// A file of an [`AnyDevice`].
#[derive(Debug)]
pub enum AnyFile {
    Uring(UringFile),
    Syscall(SyscallFile),
}

impl Device for AnyDevice {
    type File = AnyFile;

    fn active_kind(&self) -> DeviceKind {
        match self {
            AnyDevice::Uring(d) => d.active_kind(),
            AnyDevice::Syscall(d) => d.active_kind(),
        }
    }

    fn direct_io(&self) -> bool {
        match self {
            AnyDevice::Uring(d) => d.direct_io(),
            AnyDevice::Syscall(d) => d.direct_io(),
        }
    }

    async fn create(&self, path: &Path) -> io::Result<AnyFile> {
        match self {
            AnyDevice::Uring(d) => d.create(path).await.map(AnyFile::Uring),
            AnyDevice::Syscall(d) => d.create(path).await.map(AnyFile::Syscall),
        }
    }

    async fn open(&self, path: &Path) -> io::Result<AnyFile> {
        match self {
            AnyDevice::Uring(d) => d.open(path).await.map(AnyFile::Uring),
            AnyDevice::Syscall(d) => d.open(path).await.map(AnyFile::Syscall),
        }
    }
}

impl DeviceFile for AnyFile {
    async fn write_at(&self, buf: AlignedBuf, pos: u64) -> (io::Result<usize>, AlignedBuf) {
        match self {
            AnyFile::Uring(f) => f.write_at(buf, pos).await,
            AnyFile::Syscall(f) => f.write_at(buf, pos).await,
        }
    }

    async fn write_all_at(&self, buf: AlignedBuf, pos: u64) -> (io::Result<()>, AlignedBuf) {
        match self {
            AnyFile::Uring(f) => f.write_all_at(buf, pos).await,
            AnyFile::Syscall(f) => f.write_all_at(buf, pos).await,
        }
    }

    async fn read_at(&self, buf: AlignedBuf, pos: u64) -> (io::Result<usize>, AlignedBuf) {
        match self {
            AnyFile::Uring(f) => f.read_at(buf, pos).await,
            AnyFile::Syscall(f) => f.read_at(buf, pos).await,
        }
    }

    async fn read_full_at(
        &self,
        buf: AlignedBuf,
        pos: u64,
        want: usize,
    ) -> (io::Result<usize>, AlignedBuf) {
        match self {
            AnyFile::Uring(f) => f.read_full_at(buf, pos, want).await,
            AnyFile::Syscall(f) => f.read_full_at(buf, pos, want).await,
        }
    }

    async fn sync_data(&self) -> io::Result<()> {
        match self {
            AnyFile::Uring(f) => f.sync_data().await,
            AnyFile::Syscall(f) => f.sync_data().await,
        }
    }

    fn is_direct(&self) -> bool {
        match self {
            AnyFile::Uring(f) => f.is_direct(),
            AnyFile::Syscall(f) => f.is_direct(),
        }
    }
}

#[cfg(test)]
mod tests;
