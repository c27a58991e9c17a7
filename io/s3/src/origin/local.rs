//! Local-directory origin: the quick start without any S3.
//!
//! Layout, all in one flat directory:
//! ```text
//! DIR/o-<enc>   object bytes
//! DIR/m-<enc>   sidecar JSON (key, size, etag, content type, last modified, user meta)
//! DIR/t-...     temporary files of writes in progress
//! ```
//! `<enc>` is the key with every byte outside `[A-Za-z0-9._-]` (and a leading '.') written
//! as `%XX`, so '/', '..' and NUL cannot escape DIR; keys whose encoding is longer than
//! [`MAX_ENCODED`] use `~` + the hex MD5 of the key instead (`~` never appears in the
//! plain encoding), and the sidecar's `key` settles collisions.
//!
//! A write goes to temp files that are fsynced, then renamed (data, then sidecar) and the
//! directory fsynced. A reader racing a writer of the same key may see the new data with
//! the old sidecar: it notices the size mismatch and fails with a retryable error.
//! Not meant for several processes writing the same keys.
#![allow(
    clippy::disallowed_methods,
    reason = "the embedded origin runs on the origin bridge's own thread, never on a shard thread"
)]

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{BodySource, OpenedGet};
use crate::{OriginError, PutMeta, PutResult, RemoteMeta};

/// Longest `<enc>` kept as is (file names are limited to 255 bytes).
const MAX_ENCODED: usize = 200;
/// Size of the chunks a GET streams.
const CHUNK: usize = 128 * 1024;
/// Copy buffer of a PUT.
const COPY_BUF: usize = 256 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    key: String,
    size: u64,
    etag: String,
    content_type: Option<String>,
    last_modified_ms: u64,
    #[serde(default)]
    user_meta: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
}

impl Sidecar {
    fn remote_meta(&self) -> RemoteMeta {
        RemoteMeta {
            size: self.size,
            etag: self.etag.clone(),
            content_type: self.content_type.clone(),
            last_modified_ms: self.last_modified_ms,
            user_meta: self.user_meta.clone(),
            headers: self.headers.clone(),
            parts_count: None,
        }
    }
}

#[derive(Clone)]
pub(crate) struct LocalOrigin {
    dir: PathBuf,
}

/// The rest of a local object's range, read chunk by chunk.
pub(crate) struct LocalBody {
    file: tokio::fs::File,
    remaining: u64,
}

impl LocalBody {
    pub(crate) async fn next(&mut self) -> Option<Result<Bytes, OriginError>> {
        if self.remaining == 0 {
            return None;
        }
        let want = self.remaining.min(CHUNK as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let mut filled = 0;
        while filled < want {
            match self.file.read(&mut buf[filled..]).await {
                Ok(0) => {
                    return Some(Err(OriginError::Unavailable(
                        "local object shrank while reading".into(),
                    )))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Some(Err(OriginError::Unavailable(format!(
                        "read local object: {e}"
                    ))))
                }
            }
        }
        self.remaining -= want as u64;
        Some(Ok(buf.freeze()))
    }
}

/// Encodes a key into a file-name-safe string (see the module docs).
pub(crate) fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, &b) in key.as_bytes().iter().enumerate() {
        // A leading '.' is escaped too: no name is ever "." or "..", even without the prefix.
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_ENCODED {
        format!("~{}", hex::encode(Md5::digest(key.as_bytes())))
    } else {
        out
    }
}

fn io_unavailable(what: &str, e: std::io::Error) -> OriginError {
    OriginError::Unavailable(format!("{what}: {e}"))
}

impl LocalOrigin {
    pub async fn open(dir: PathBuf) -> Result<LocalOrigin, OriginError> {
        tokio::fs::create_dir_all(&dir).await.map_err(|e| {
            OriginError::Rejected(format!("create local origin dir {}: {e}", dir.display()))
        })?;
        Ok(LocalOrigin { dir })
    }

    fn data_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("o-{}", encode_key(key)))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("m-{}", encode_key(key)))
    }

    async fn read_sidecar(&self, key: &str) -> Result<Sidecar, OriginError> {
        let raw = match tokio::fs::read(self.meta_path(key)).await {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OriginError::NotFound)
            }
            Err(e) => return Err(io_unavailable("read local sidecar", e)),
        };
        let sc: Sidecar = serde_json::from_slice(&raw).map_err(|e| {
            OriginError::Rejected(format!("corrupt local sidecar for {key:?}: {e}"))
        })?;
        if sc.key != key {
            // Hash collision of two long keys: the other one is stored.
            return Err(OriginError::NotFound);
        }
        Ok(sc)
    }

    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        part: Option<u32>,
        if_none_match: Option<&str>,
    ) -> Result<OpenedGet, OriginError> {
        check_part(part)?;
        let sc = self.read_sidecar(key).await?;
        if if_none_match.is_some_and(|e| e == sc.remote_meta().etag) {
            return Err(OriginError::NotModified);
        }
        let mut file = match tokio::fs::File::open(self.data_path(key)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OriginError::NotFound)
            }
            Err(e) => return Err(io_unavailable("open local object", e)),
        };
        let actual = file
            .metadata()
            .await
            .map_err(|e| io_unavailable("stat local object", e))?
            .len();
        if actual != sc.size {
            return Err(OriginError::Unavailable(
                "local object is being replaced".into(),
            ));
        }
        let (a, b) = match range {
            None => (0, sc.size),
            Some((a, b)) => {
                if b <= a || a >= sc.size {
                    return Err(OriginError::InvalidRange);
                }
                (a, b.min(sc.size))
            }
        };
        if a > 0 {
            file.seek(SeekFrom::Start(a))
                .await
                .map_err(|e| io_unavailable("seek local object", e))?;
        }
        Ok(OpenedGet {
            meta: sc.remote_meta(),
            range: (a, b),
            body: BodySource::Local(LocalBody {
                file,
                remaining: b - a,
            }),
        })
    }

    pub async fn head(&self, key: &str, part: Option<u32>) -> Result<RemoteMeta, OriginError> {
        check_part(part)?;
        Ok(self.read_sidecar(key).await?.remote_meta())
    }

    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        offset: u64,
        len: u64,
        meta: &PutMeta,
    ) -> Result<PutResult, OriginError> {
        let src = crate::PutSource::File {
            path: path.to_owned(),
            offset,
            len,
        };
        self.put(key, src, meta).await
    }

    /// Stores `src` as `key` (a temp file, fsynced, then renamed into place).
    pub(crate) async fn put(
        &self,
        key: &str,
        src: crate::PutSource,
        meta: &PutMeta,
    ) -> Result<PutResult, OriginError> {
        let dir = self.dir.clone();
        let data_path = self.data_path(key);
        let meta_path = self.meta_path(key);
        let key = key.to_owned();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            put_blocking(&dir, &data_path, &meta_path, src, key, meta)
        })
        .await
        .map_err(|e| OriginError::Unavailable(format!("local put task failed: {e}")))?
    }

    pub async fn delete(&self, key: &str) -> Result<(), OriginError> {
        for p in [self.meta_path(key), self.data_path(key)] {
            match tokio::fs::remove_file(&p).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_unavailable("delete local object", e)),
            }
        }
        Ok(())
    }

    pub async fn ensure_bucket(&self) -> Result<(), OriginError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| io_unavailable("create local origin dir", e))
    }
}

/// Removes a temp file unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!(
        "t-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

fn put_blocking(
    dir: &Path,
    data_path: &Path,
    meta_path: &Path,
    source: crate::PutSource,
    key: String,
    meta: PutMeta,
) -> Result<PutResult, OriginError> {
    let (what, offset, len) = match &source {
        crate::PutSource::File { path, offset, len } => (path.display().to_string(), *offset, *len),
        crate::PutSource::Bytes(b) => ("(in memory)".to_owned(), 0, b.len() as u64),
    };
    let src_err =
        |e: std::io::Error| OriginError::Rejected(format!("read upload source {what}: {e}"));
    let mut src: Box<dyn Read> = match source {
        crate::PutSource::File { path, offset, .. } => {
            let mut f = std::fs::File::open(&path).map_err(src_err)?;
            f.seek(SeekFrom::Start(offset)).map_err(src_err)?;
            Box::new(f)
        }
        crate::PutSource::Bytes(b) => Box::new(std::io::Cursor::new(b)),
    };

    let tmp_data = temp_path(dir);
    let mut data_guard = TempGuard(Some(tmp_data.clone()));
    let mut out = std::fs::File::create(&tmp_data)
        .map_err(|e| io_unavailable("create local temp file", e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut left = len;
    while left > 0 {
        let want = left.min(COPY_BUF as u64) as usize;
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(OriginError::Rejected(format!(
                    "upload source {what} is shorter than offset {offset} + length {len}"
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(src_err(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| io_unavailable("write local object", e))?;
        left -= n as u64;
    }
    out.sync_all()
        .map_err(|e| io_unavailable("fsync local object", e))?;
    drop(out);
    let etag = hex::encode(hasher.finalize());
    if let Some(want) = &meta.md5_hex {
        if !want.eq_ignore_ascii_case(&etag) {
            return Err(OriginError::Rejected(format!(
                "BadDigest: Content-MD5 {want} but body has {etag}"
            )));
        }
    }

    let last_modified_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let sc = Sidecar {
        key,
        size: len,
        etag: etag.clone(),
        content_type: meta.content_type,
        last_modified_ms,
        user_meta: meta
            .user_meta
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
        headers: meta.headers,
    };
    let json = serde_json::to_vec(&sc)
        .map_err(|e| OriginError::Rejected(format!("encode sidecar: {e}")))?;
    let tmp_meta = temp_path(dir);
    let mut meta_guard = TempGuard(Some(tmp_meta.clone()));
    let mut f = std::fs::File::create(&tmp_meta)
        .map_err(|e| io_unavailable("create local temp file", e))?;
    f.write_all(&json)
        .map_err(|e| io_unavailable("write local sidecar", e))?;
    f.sync_all()
        .map_err(|e| io_unavailable("fsync local sidecar", e))?;
    drop(f);

    std::fs::rename(&tmp_data, data_path).map_err(|e| io_unavailable("rename local object", e))?;
    data_guard.0 = None;
    std::fs::rename(&tmp_meta, meta_path).map_err(|e| io_unavailable("rename local sidecar", e))?;
    meta_guard.0 = None;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_unavailable("fsync local origin dir", e))?;
    Ok(PutResult { etag })
}

/// Objects of the local origin are whole: part 1 is the object, other parts don't exist.
fn check_part(part: Option<u32>) -> Result<(), OriginError> {
    match part {
        None | Some(1) => Ok(()),
        Some(_) => Err(OriginError::Service {
            status: 416,
            code: "InvalidPartNumber".into(),
            message: "The requested partnumber is not satisfiable".into(),
        }),
    }
}

fn service(status: u16, code: &str, message: String) -> OriginError {
    OriginError::Service {
        status,
        code: code.into(),
        message,
    }
}

/// Buckets of the S3 API in the local origin: `DIR/buckets/<name>/`, each laid out like
/// the flat directory above. (The native API's objects stay in DIR itself.)
impl LocalOrigin {
    fn buckets_dir(&self) -> PathBuf {
        self.dir.join("buckets")
    }

    fn bucket_dir(&self, bucket: &str) -> Result<PathBuf, OriginError> {
        let ok = !bucket.is_empty()
            && bucket.len() <= 63
            && !bucket.starts_with('.')
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok {
            return Err(service(
                400,
                "InvalidBucketName",
                format!("The specified bucket is not valid: {bucket}"),
            ));
        }
        Ok(self.buckets_dir().join(bucket))
    }

    /// The origin for `bucket` (None: this one); the bucket must exist.
    pub(crate) fn bucket(&self, bucket: Option<&str>) -> Result<LocalOrigin, OriginError> {
        let Some(b) = bucket else {
            return Ok(self.clone());
        };
        let dir = self.bucket_dir(b)?;
        if !dir.is_dir() {
            return Err(service(
                404,
                "NoSuchBucket",
                format!("The specified bucket does not exist: {b}"),
            ));
        }
        Ok(LocalOrigin { dir })
    }

    fn sidecars(&self) -> Result<Vec<Sidecar>, OriginError> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| io_unavailable("list bucket", e))?;
        for ent in rd.flatten() {
            let name = ent.file_name();
            if !name.to_string_lossy().starts_with("m-") {
                continue;
            }
            if let Ok(raw) = std::fs::read(ent.path()) {
                if let Ok(sc) = serde_json::from_slice::<Sidecar>(&raw) {
                    out.push(sc);
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub(crate) async fn call(&self, call: &super::Call) -> Result<super::Reply, OriginError> {
        use super::Call;
        match call {
            Call::ListBuckets => Ok(self.list_buckets()),
            Call::CreateBucket(b) => self.create_bucket(b),
            Call::HeadBucket(b) => self.bucket(Some(b)).map(|_| super::Reply::Unit),
            Call::DeleteBucket(b) => self.delete_bucket(b),
            Call::List(b, p) => self.list_objects(b, p),
            Call::Copy { dst, src, meta } => self.copy_object(dst, src, meta.as_ref()).await,
            Call::CreateMultipart { .. }
            | Call::UploadPart { .. }
            | Call::UploadPartCopy { .. }
            | Call::Complete { .. }
            | Call::Abort { .. }
            | Call::ListParts { .. }
            | Call::ListUploads(..) => Err(super::not_implemented("multipart upload")),
            Call::GetTagging(_) | Call::PutTagging(..) | Call::DeleteTagging(_) => {
                Err(super::not_implemented("object tagging"))
            }
        }
    }

    fn list_buckets(&self) -> super::Reply {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.buckets_dir()) {
            for ent in rd.flatten() {
                let created_ms = ent
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                out.push(crate::BucketInfo {
                    name: ent.file_name().to_string_lossy().into_owned(),
                    created_ms,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        super::Reply::Buckets(out)
    }

    fn create_bucket(&self, b: &str) -> Result<super::Reply, OriginError> {
        let dir = self.bucket_dir(b)?;
        if dir.is_dir() {
            return Err(service(
                409,
                "BucketAlreadyOwnedByYou",
                format!("Your previous request to create the named bucket succeeded and you already own it: {b}"),
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_unavailable("create bucket", e))?;
        Ok(super::Reply::Unit)
    }

    fn delete_bucket(&self, b: &str) -> Result<super::Reply, OriginError> {
        let o = self.bucket(Some(b))?;
        let empty = std::fs::read_dir(&o.dir)
            .map_err(|e| io_unavailable("read bucket", e))?
            .flatten()
            .all(|e| e.file_name().to_string_lossy().starts_with("t-"));
        if !empty {
            return Err(service(
                409,
                "BucketNotEmpty",
                format!("The bucket you tried to delete is not empty: {b}"),
            ));
        }
        std::fs::remove_dir_all(&o.dir).map_err(|e| io_unavailable("delete bucket", e))?;
        Ok(super::Reply::Unit)
    }

    fn list_objects(&self, b: &str, p: &crate::ListParams) -> Result<super::Reply, OriginError> {
        let o = self.bucket(Some(b))?;
        let mut page = crate::ListPage::default();
        let max = p.max_keys.min(1000) as usize;
        let mut n = 0;
        for sc in o.sidecars()? {
            if !sc.key.starts_with(&p.prefix)
                || p.start_after.as_ref().is_some_and(|s| sc.key <= *s)
            {
                continue;
            }
            let rest = &sc.key[p.prefix.len()..];
            let cp = p
                .delimiter
                .as_deref()
                .filter(|d| !d.is_empty())
                .and_then(|d| {
                    rest.find(d)
                        .map(|i| format!("{}{}", p.prefix, &rest[..i + d.len()]))
                });
            if let Some(cp) = &cp {
                if page.common_prefixes.last() == Some(cp) {
                    continue;
                }
            }
            if n == max {
                page.is_truncated = true;
                break;
            }
            n += 1;
            match cp {
                Some(cp) => page.common_prefixes.push(cp),
                None => page.entries.push(crate::ListEntry {
                    key: sc.key,
                    size: sc.size,
                    etag: sc.etag,
                    last_modified_ms: sc.last_modified_ms,
                    storage_class: Some("STANDARD".into()),
                }),
            }
        }
        Ok(super::Reply::List(page))
    }

    async fn copy_object(
        &self,
        dst: &crate::ObjectLoc,
        src: &crate::CopySource,
        meta: Option<&PutMeta>,
    ) -> Result<super::Reply, OriginError> {
        let so = self.bucket(Some(&src.bucket))?;
        let sc = so.read_sidecar(&src.key).await?;
        let dobj = self.bucket(Some(&dst.bucket))?;
        let pm = match meta {
            Some(m) => m.clone(),
            None => PutMeta {
                content_type: sc.content_type.clone(),
                user_meta: sc.user_meta.clone(),
                md5_hex: None,
                headers: sc.headers.clone(),
            },
        };
        let r = dobj
            .put_file(&dst.key, &so.data_path(&src.key), 0, sc.size, &pm)
            .await?;
        Ok(super::Reply::Copy(crate::CopyResult {
            etag: r.etag,
            last_modified_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }))
    }
}
