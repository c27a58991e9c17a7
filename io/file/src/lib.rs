//! # nearcache-file: disk devices
//!
//! Goals: aligned, owned-buffer file I/O for the shard engine, through one [`Device`]
//! trait with an io_uring implementation (monoio, O_DIRECT) and a plain-syscall one
//! (pread/pwrite) that tests and machines without io_uring can pick.
//! Non-goals: caching, file formats, sockets. All `unsafe` of the engine lives here.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// io_uring through monoio when the runtime has it, else plain syscalls.
    #[default]
    Auto,
    Uring,
    Syscall,
}
