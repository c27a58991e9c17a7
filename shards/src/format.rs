//! On-disk layout of one object file (`<dir>/objects/<seq & 0xff:02x>/<seq:016x>`).
//!
//! ```text
//! offset 0          4096                    4096 + align(size)      + align(4 * n_blocks)
//! +-----------------+-----------------------+------------------------+
//! | header block    | body: `size` bytes,   | CRC32C table: one u32  |
//! | (4096 bytes)    | zero-padded to 4096   | LE per 256 KiB block,  |
//! |                 |                       | zero-padded to 4096    |
//! +-----------------+-----------------------+------------------------+
//!
//! header block (little-endian):
//!    0  magic       [u8; 8]  b"NCOBJ\0v1"
//!    8  version     u16      FORMAT_VERSION
//!   10  flags       u16      0 (reserved)
//!   12  block_size  u32      checksummed block size (defaults::BLOCK_SIZE)
//!   16  body_size   u64
//!   24  n_blocks    u64      ceil(body_size / block_size)
//!   32  table_off   u64      4096 + align4096(body_size)
//!   40  seq         u64      journal sequence number (also the file name)
//!   48  body_crc    u32      CRC32C of the whole body
//!   52  table_crc   u32      CRC32C of the n_blocks * 4 table bytes
//!   56  key_len     u16
//!   58  key         [u8; key_len]
//!   ..  zeros
//! 4092  header_crc  u32      CRC32C of bytes [0, 4092)
//! ```
//!
//! The body starts at [`BODY_OFFSET`] and is contiguous, so the S3 uploader can send
//! `(path, 4096, size)` as is. Each block's CRC covers only the body bytes of the block
//! (not the padding). `FORMAT_VERSION` must change with the layout.

use crate::defaults::BLOCK_SIZE;
use nearcache_file::{align_up_u64, AlignedBuf};

pub(crate) const MAGIC: [u8; 8] = *b"NCOBJ\0v1";
pub(crate) const FORMAT_VERSION: u16 = 1;
pub(crate) const HEADER_SIZE: usize = 4096;
pub(crate) const BODY_OFFSET: u64 = HEADER_SIZE as u64;
const KEY_OFFSET: usize = 58;
const CRC_OFFSET: usize = HEADER_SIZE - 4;
/// Longest key the header holds.
pub(crate) const MAX_KEY_LEN: usize = CRC_OFFSET - KEY_OFFSET;
/// Largest body a header may declare (256 TiB, far above S3's 5 TiB objects): keeps
/// offsets and table sizes derived from a header free of overflow.
pub(crate) const MAX_BODY_SIZE: u64 = 1 << 48;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub block_size: u32,
    pub body_size: u64,
    pub n_blocks: u64,
    pub table_off: u64,
    pub seq: u64,
    pub body_crc: u32,
    pub table_crc: u32,
    pub key: String,
}

/// A verification failure: what was checked, what it should be, what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch {
    pub what: &'static str,
    pub expected: String,
    pub actual: String,
}

impl Mismatch {
    pub fn new(what: &'static str, expected: impl ToString, actual: impl ToString) -> Mismatch {
        Mismatch {
            what,
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
}

pub(crate) fn n_blocks(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

pub(crate) fn table_off(size: u64) -> u64 {
    BODY_OFFSET + align_up_u64(size)
}

/// Bytes of the CRC table, unpadded.
pub(crate) fn table_len(n_blocks: u64) -> usize {
    n_blocks as usize * 4
}

impl Header {
    pub fn new(key: &str, seq: u64, body_size: u64, body_crc: u32, table: &[u32]) -> Header {
        Header {
            block_size: BLOCK_SIZE as u32,
            body_size,
            n_blocks: table.len() as u64,
            table_off: table_off(body_size),
            seq,
            body_crc,
            table_crc: crc32c::crc32c(&encode_table(table)),
            key: key.to_owned(),
        }
    }

    /// The 4096-byte header block.
    pub fn encode(&self) -> AlignedBuf {
        let mut buf = AlignedBuf::with_capacity(HEADER_SIZE);
        buf.set_len(HEADER_SIZE);
        let b = buf.as_mut_slice();
        b.fill(0);
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.body_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.n_blocks.to_le_bytes());
        b[32..40].copy_from_slice(&self.table_off.to_le_bytes());
        b[40..48].copy_from_slice(&self.seq.to_le_bytes());
        b[48..52].copy_from_slice(&self.body_crc.to_le_bytes());
        b[52..56].copy_from_slice(&self.table_crc.to_le_bytes());
        let key = self.key.as_bytes();
        assert!(key.len() <= MAX_KEY_LEN, "key too long for the header");
        b[56..58].copy_from_slice(&(key.len() as u16).to_le_bytes());
        b[KEY_OFFSET..KEY_OFFSET + key.len()].copy_from_slice(key);
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Parses and verifies a header block (magic, version, CRC, internal consistency).
    pub fn decode(b: &[u8]) -> Result<Header, Mismatch> {
        if b.len() < HEADER_SIZE {
            return Err(Mismatch::new("header length", HEADER_SIZE, b.len()));
        }
        if b[0..8] != MAGIC {
            return Err(Mismatch::new(
                "magic",
                hex::encode(MAGIC),
                hex::encode(&b[0..8]),
            ));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let version = u16_at(8);
        if version != FORMAT_VERSION {
            return Err(Mismatch::new("format version", FORMAT_VERSION, version));
        }
        let stored = u32_at(CRC_OFFSET);
        let computed = crc32c::crc32c(&b[..CRC_OFFSET]);
        if stored != computed {
            return Err(Mismatch::new(
                "header checksum",
                format!("{stored:08x}"),
                format!("{computed:08x}"),
            ));
        }
        let flags = u16_at(10);
        if flags != 0 {
            return Err(Mismatch::new("header flags", 0, flags));
        }
        let key_len = u16_at(56) as usize;
        if key_len > MAX_KEY_LEN {
            return Err(Mismatch::new("header key length", MAX_KEY_LEN, key_len));
        }
        // Reserved bytes are zero: anything else was not written by this version.
        if let Some(at) = b[KEY_OFFSET + key_len..CRC_OFFSET]
            .iter()
            .position(|&x| x != 0)
        {
            let at = KEY_OFFSET + key_len + at;
            return Err(Mismatch::new(
                "header padding",
                format!("zeros after the key (offset {at})"),
                format!("byte {:#04x}", b[at]),
            ));
        }
        let key = String::from_utf8(b[KEY_OFFSET..KEY_OFFSET + key_len].to_vec())
            .map_err(|_| Mismatch::new("header key", "UTF-8", "invalid UTF-8"))?;
        let body_size = u64_at(16);
        if body_size > MAX_BODY_SIZE {
            return Err(Mismatch::new(
                "body size",
                format!("at most {MAX_BODY_SIZE}"),
                body_size,
            ));
        }
        let h = Header {
            block_size: u32_at(12),
            body_size: u64_at(16),
            n_blocks: u64_at(24),
            table_off: u64_at(32),
            seq: u64_at(40),
            body_crc: u32_at(48),
            table_crc: u32_at(52),
            key,
        };
        if u64::from(h.block_size) != BLOCK_SIZE {
            return Err(Mismatch::new("block size", BLOCK_SIZE, h.block_size));
        }
        if h.n_blocks != n_blocks(h.body_size) {
            return Err(Mismatch::new(
                "block count",
                n_blocks(h.body_size),
                h.n_blocks,
            ));
        }
        if h.table_off != table_off(h.body_size) {
            return Err(Mismatch::new(
                "table offset",
                table_off(h.body_size),
                h.table_off,
            ));
        }
        Ok(h)
    }
}

pub(crate) fn encode_table(table: &[u32]) -> Vec<u8> {
    table.iter().flat_map(|c| c.to_le_bytes()).collect()
}

/// Verifies the checksum table read from `b` (its first `table_len(n_blocks)` bytes)
/// against the header and decodes it.
pub(crate) fn check_table(header: &Header, b: &[u8]) -> Result<Vec<u32>, Mismatch> {
    let tlen = table_len(header.n_blocks);
    if b.len() < tlen {
        return Err(Mismatch::new("checksum table length", tlen, b.len()));
    }
    let crc = crc32c::crc32c(&b[..tlen]);
    if crc != header.table_crc {
        return Err(Mismatch::new(
            "checksum table",
            format!("{:08x}", header.table_crc),
            format!("{crc:08x}"),
        ));
    }
    Ok(b[..tlen]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Body bytes of block `i` of a body of `body_size` bytes.
pub(crate) fn block_len(body_size: u64, i: u64) -> usize {
    body_size.saturating_sub(i * BLOCK_SIZE).min(BLOCK_SIZE) as usize
}

/// Verifies block `i` (`data`: what was read at its place, at least its body bytes)
/// against the table; returns the block's body length.
pub(crate) fn check_block(
    header: &Header,
    table: &[u32],
    i: u64,
    data: &[u8],
) -> Result<usize, Mismatch> {
    let Some(&expected) = usize::try_from(i).ok().and_then(|i| table.get(i)) else {
        return Err(Mismatch::new(
            "block index",
            format!("below {}", table.len()),
            i,
        ));
    };
    let len = block_len(header.body_size, i);
    if data.len() < len {
        return Err(Mismatch::new(
            "block length",
            format!("{len} (block {i})"),
            data.len(),
        ));
    }
    let crc = crc32c::crc32c(&data[..len]);
    if crc != expected {
        return Err(Mismatch::new(
            "block checksum",
            format!("{expected:08x} (block {i})"),
            format!("{crc:08x}"),
        ));
    }
    Ok(len)
}

/// A whole object file in memory, as the writer lays it out (for tests and fuzzing).
#[cfg(test)]
pub(crate) fn encode_object(key: &str, seq: u64, body: &[u8]) -> Vec<u8> {
    let table: Vec<u32> = body
        .chunks(BLOCK_SIZE as usize)
        .map(crc32c::crc32c)
        .collect();
    let header = Header::new(key, seq, body.len() as u64, crc32c::crc32c(body), &table);
    let mut out = header.encode().as_slice().to_vec();
    out.extend_from_slice(body);
    out.resize(table_off(body.len() as u64) as usize, 0);
    out.extend_from_slice(&encode_table(&table));
    out.resize(nearcache_file::align_up(out.len()), 0);
    out
}

/// Parses and verifies a whole object file in memory (header, table, every block and the
/// body checksum), the way the read path does; returns the header and the body.
#[cfg(test)]
pub(crate) fn decode_object(image: &[u8]) -> Result<(Header, Vec<u8>), Mismatch> {
    let header = Header::decode(image)?;
    let table_off = header.table_off as usize;
    let table = check_table(&header, image.get(table_off..).unwrap_or_default())?;
    let mut body = Vec::with_capacity(header.body_size as usize);
    for i in 0..header.n_blocks {
        let start = (BODY_OFFSET + i * BLOCK_SIZE) as usize;
        let len = check_block(&header, &table, i, image.get(start..).unwrap_or_default())?;
        body.extend_from_slice(&image[start..start + len]);
    }
    let crc = crc32c::crc32c(&body);
    if crc != header.body_crc {
        return Err(Mismatch::new(
            "body checksum",
            format!("{:08x}", header.body_crc),
            format!("{crc:08x}"),
        ));
    }
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_checks() {
        let h = Header::new("a/b.txt", 42, BLOCK_SIZE + 3, 0xdead_beef, &[1, 2]);
        let buf = h.encode();
        assert_eq!(buf.len(), HEADER_SIZE);
        assert_eq!(Header::decode(buf.as_slice()).unwrap(), h);

        let mut bad = buf.as_slice().to_vec();
        bad[20] ^= 1;
        let e = Header::decode(&bad).unwrap_err();
        assert_eq!(e.what, "header checksum");
        assert_ne!(e.expected, e.actual);

        let mut bad = buf.as_slice().to_vec();
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad).unwrap_err().what, "magic");

        let mut bad = buf.as_slice().to_vec();
        bad[8] = 9;
        let e = Header::decode(&bad).unwrap_err();
        assert_eq!(
            (e.what, e.expected.as_str(), e.actual.as_str()),
            ("format version", "1", "9")
        );
    }

    /// Found by the fuzz target `header_arbitrary_bytes_never_panic`: a header with a valid
    /// checksum but non-zero reserved bytes (flags, bytes after the key) was accepted, so
    /// a decoded header did not re-encode to the same block.
    #[test]
    fn nonzero_reserved_bytes_are_refused() {
        let h = Header::new("k", 1, 5, 0, &[3]);
        let fix_crc = |b: &mut Vec<u8>| {
            let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
            b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        };
        let mut b = h.encode().as_slice().to_vec();
        b[KEY_OFFSET + 1] = 0x35;
        fix_crc(&mut b);
        let e = Header::decode(&b).unwrap_err();
        assert_eq!(e.what, "header padding");
        assert_eq!(e.actual, "byte 0x35");
        let mut b = h.encode().as_slice().to_vec();
        b[10] = 1;
        fix_crc(&mut b);
        let e = Header::decode(&b).unwrap_err();
        assert_eq!(
            (e.what, e.expected.as_str(), e.actual.as_str()),
            ("header flags", "0", "1")
        );
    }

    /// A header with a valid checksum and a huge body size made `table_off` overflow.
    #[test]
    fn huge_body_size_is_refused() {
        let mut b = Header::new("k", 1, 5, 0, &[3]).encode().as_slice().to_vec();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        let e = Header::decode(&b).unwrap_err();
        assert_eq!(e.what, "body size");
        assert_eq!(e.actual, u64::MAX.to_string());
    }

    #[test]
    fn geometry() {
        assert_eq!(n_blocks(0), 0);
        assert_eq!(n_blocks(1), 1);
        assert_eq!(n_blocks(BLOCK_SIZE), 1);
        assert_eq!(n_blocks(BLOCK_SIZE + 1), 2);
        assert_eq!(table_off(0), 4096);
        assert_eq!(table_off(1), 8192);
        assert_eq!(table_off(4096), 8192);
        assert_eq!(table_off(4097), 12288);
        let h = Header::new("k", 1, BLOCK_SIZE + 1, 0, &[7, 9]);
        assert_eq!(check_table(&h, &encode_table(&[7, 9])), Ok(vec![7, 9]));
    }
}
