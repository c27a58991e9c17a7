//! The manifest `seed` writes and the other scenarios read: keys, sizes and MD5s.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Bump when the meaning of the fields or the id/body scheme of [`crate::content`] changes.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// `--seed` of the run that wrote it; bodies derive from (seed, id).
    pub seed: u64,
    /// API the objects were written through (`native`, `s3`, `plain`).
    pub api: String,
    /// Key prefix used for s3/plain keys.
    #[serde(default)]
    pub prefix: String,
    pub objects: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The ULID (the native API's id).
    pub id: String,
    /// The key for s3/plain APIs: prefix + id.
    pub key: String,
    pub size: u64,
    /// Hex MD5 of the body.
    pub md5: String,
}

impl Manifest {
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let raw = std::fs::read(path)
            .with_context(|| format!("reading manifest {} (run `seed` first)", path.display()))?;
        let m: Manifest = serde_json::from_slice(&raw)
            .with_context(|| format!("parsing manifest {}", path.display()))?;
        if m.version != MANIFEST_VERSION {
            bail!(
                "manifest {} has version {}, this tool reads version {MANIFEST_VERSION}",
                path.display(),
                m.version
            );
        }
        Ok(m)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec(self).context("serializing the manifest")?;
        std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }
}

pub fn parse_md5(hex_str: &str) -> anyhow::Result<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(hex_str, &mut out)
        .with_context(|| format!("manifest md5 {hex_str:?} is not 32 hex digits"))?;
    Ok(out)
}
