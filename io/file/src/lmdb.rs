//! Opening an LMDB environment (the shard journal's store). heed marks `open` unsafe;
//! it lives here so that the engine crate stays free of `unsafe`.

use std::path::Path;

/// Opens (or creates) the LMDB environment in `dir`.
///
/// The caller must open each directory at most once per process and keep other processes
/// out of it (nearcache's data-dir lock file does): LMDB maps the files into memory and
/// heed's safety rests on nobody else modifying them behind its back.
pub fn open_lmdb_env(dir: &Path, map_size: usize, max_dbs: u32) -> heed::Result<heed::Env> {
    // SAFETY: per this function's contract, `dir` is opened once per process (heed also
    // refuses a second open of the same path in one process) and no other process writes
    // it while the returned env lives.
    unsafe {
        heed::EnvOpenOptions::new()
            .map_size(map_size)
            .max_dbs(max_dbs)
            .open(dir)
    }
}
