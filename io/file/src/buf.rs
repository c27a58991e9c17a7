//! [`AlignedBuf`]: the one buffer type every device operation takes and gives back.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of buffer addresses, lengths and file offsets for O_DIRECT.
pub const ALIGN: usize = 4096;

/// Rounds `n` up to the next multiple of [`ALIGN`].
pub const fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Rounds `n` up to the next multiple of [`ALIGN`], for file offsets.
pub const fn align_up_u64(n: u64) -> u64 {
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// An owned heap buffer whose address and capacity are multiples of 4096, as O_DIRECT
/// wants. The whole capacity is zeroed at allocation, so every byte is always
/// initialized; `len` says how many of them hold data.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like a Vec<u8>); nothing else
// points into it, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give read access to initialized bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of at least `capacity` bytes (rounded up to 4096, at least 4096).
    pub fn with_capacity(capacity: usize) -> AlignedBuf {
        let cap = align_up(capacity.max(1));
        let layout = Layout::from_size_align(cap, ALIGN).expect("aligned buffer layout");
        // SAFETY: `layout` has a non-zero size (cap >= 4096).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, cap, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes that can still be appended.
    pub fn remaining(&self) -> usize {
        self.cap - self.len
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Sets the length. Bytes past the old length keep whatever they held (zeros or
    /// older data): always initialized, never uninitialized memory.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "AlignedBuf::set_len {len} beyond capacity {}",
            self.cap
        );
        self.len = len;
    }

    /// The data bytes, `[0, len)`.
    pub fn as_slice(&self) -> &[u8] {
        &self.full()[..self.len]
    }

    /// The data bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.full_mut()[..len]
    }

    /// The whole capacity, including bytes past `len`.
    pub fn full(&self) -> &[u8] {
        // SAFETY: ptr points to `cap` bytes we own, all initialized (alloc_zeroed), and
        // the returned borrow is tied to &self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    /// The whole capacity, mutable.
    pub fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `full`, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Appends as much of `data` as fits; returns how many bytes were copied.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.remaining());
        let start = self.len;
        self.full_mut()[start..start + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Zero-fills from `len` up to the next multiple of 4096 and extends `len` to it.
    pub fn pad_to_alignment(&mut self) {
        let start = self.len;
        let end = align_up(start);
        self.full_mut()[start..end].fill(0);
        self.len = end;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("aligned buffer layout");
        // SAFETY: ptr was allocated in `with_capacity` with exactly this layout and is
        // freed only here, once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

// SAFETY: read_ptr points to our heap allocation, which does not move when the
// AlignedBuf value moves (monoio pins the value anyway); `bytes_init` = len <= cap and
// all those bytes are initialized.
unsafe impl monoio::buf::IoBuf for AlignedBuf {
    fn read_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: write_ptr points to `cap` writable bytes owned by this buffer and stable across
// moves; bytes_total = cap.
unsafe impl monoio::buf::IoBufMut for AlignedBuf {
    fn write_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn bytes_total(&mut self) -> usize {
        self.cap
    }

    unsafe fn set_init(&mut self, pos: usize) {
        // Every byte of the allocation is initialized (zeroed at allocation), so any
        // pos <= cap is valid.
        self.len = pos.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_padded() {
        let mut b = AlignedBuf::with_capacity(5000);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.full().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.extend_from_slice(&[7u8; 10]), 10);
        b.pad_to_alignment();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b.as_slice()[..10], &[7u8; 10]);
        assert!(b.as_slice()[10..].iter().all(|&x| x == 0));
        assert_eq!(b.extend_from_slice(&[1u8; 10000]), 4096);
        assert_eq!(b.remaining(), 0);
    }
}
