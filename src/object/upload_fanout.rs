//! The S3 API's multipart uploads and server-side copies on every backend of the key's
//! set at once (with one backend: on it, as a plain pass-through).
//!
//! - **Multipart.** An upload is created on every backend of the set that takes writes
//!   now. The client's upload id names them all ([`Upload`]: `nc1.` and the base64url of
//!   the (backend, upload id) pairs, lead first), so any node of a cluster, before or
//!   after a restart, serves the upload's later calls without state of its own. Each
//!   part, staged once on the node that received it, is sent from that file to every
//!   backend in parallel; the lead's answer is the client's.
//! - **Completion** runs on the lead first (its ETag is the client's), then on the others
//!   in parallel. A backend that cannot complete (it missed a part, failed, is in
//!   maintenance or has its circuit open, or has an older write of the key queued or in
//!   flight) has its upload aborted and gets a sync log entry, committed before the
//!   client is answered; the syncer copies the object from a backend that has it.
//! - **CopyObject** runs on every backend of the destination's set at once, each copying
//!   within itself; a backend that fails or cannot take it gets a sync log entry. The
//!   answer is that of the first backend of the set that copied.
//! - An upload id without the prefix (one from a listing, or from before several
//!   backends) lives on the primary backend only; the others get the object through the
//!   sync log when it completes.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use futures::future::join_all;
use nearcache_backends::{Admit, Backends};
use nearcache_s3::{CopyResult, CopySource, ObjectLoc, PartsPage, PutMeta};
use nearcache_shards::{SyncCause, SyncKind};

use super::backends::{entry, set_of};
use super::{CacheKey, ObjectCtx, ObjectError};

/// The prefix of an upload id that names an upload on several backends.
const PREFIX: &str = "nc1.";
/// Longer client upload ids are refused unread.
const MAX_ID_LEN: usize = 8 * 1024;

/// One multipart upload as the backends know it: (backend index, its upload id), the lead
/// first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    ids: Vec<(usize, String)>,
}

impl Upload {
    /// The id the client is given: the lead's own id when the upload lives on the
    /// primary backend alone (what a listing shows), else the encoded pairs.
    fn client_id(&self, bk: &Backends) -> String {
        if let [(lead, id)] = self.ids.as_slice() {
            if Some(*lead) == primary(bk) {
                return id.clone();
            }
        }
        let pairs: Vec<(&str, &str)> = self
            .ids
            .iter()
            .map(|(i, id)| (bk.get_backend(*i).name.as_str(), id.as_str()))
            .collect();
        encode(&pairs)
    }

    /// The upload a client's id names; an id that does not decode, or names a backend
    /// outside the key's set, is S3's `NoSuchUpload`.
    pub fn parse(bk: &Backends, key: &CacheKey, client_id: &str) -> Result<Upload, ObjectError> {
        let Some(pairs) = decode(client_id).map_err(|why| no_such_upload(client_id, why))? else {
            let lead = primary(bk).ok_or_else(|| no_such_upload(client_id, "no primary"))?;
            return Ok(Upload {
                ids: vec![(lead, client_id.to_owned())],
            });
        };
        let set = set_of(bk, key);
        let mut ids = Vec::with_capacity(pairs.len());
        for (name, id) in pairs {
            let i = bk
                .index_of(&name)
                .filter(|i| set.members.contains(i) && !ids.iter().any(|(j, _)| j == i))
                .ok_or_else(|| {
                    no_such_upload(client_id, "it names a backend outside the key's set")
                })?;
            ids.push((i, id));
        }
        Ok(Upload { ids })
    }

    /// The lead backend and its upload id.
    pub fn lead(&self) -> (usize, &str) {
        (self.ids[0].0, &self.ids[0].1)
    }
}

/// The client's id of an upload on several backends: [`PREFIX`] and the base64url of
/// the JSON list of (backend name, upload id) pairs.
fn encode(pairs: &[(&str, &str)]) -> String {
    let json = serde_json::to_vec(pairs).expect("strings serialize");
    format!("{PREFIX}{}", B64.encode(json))
}

/// The (backend name, upload id) pairs of a client's upload id; `Ok(None)`: a backend's
/// own id (no prefix).
fn decode(client_id: &str) -> Result<Option<Vec<(String, String)>>, &'static str> {
    let Some(encoded) = client_id.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    if client_id.len() > MAX_ID_LEN {
        return Err("the upload id is too long");
    }
    let json = B64.decode(encoded).map_err(|_| "not base64url")?;
    let pairs: Vec<(String, String)> =
        serde_json::from_slice(&json).map_err(|_| "not a list of (backend, id) pairs")?;
    if pairs.is_empty() {
        return Err("it names no backend");
    }
    Ok(Some(pairs))
}

fn primary(bk: &Backends) -> Option<usize> {
    bk.index_of(&bk.primary().name)
}

fn no_such_upload(id: &str, why: &str) -> ObjectError {
    ObjectError::Origin {
        status: 404,
        code: "NoSuchUpload".into(),
        message: format!(
            "The specified multipart upload does not exist ({why}). The upload ID may be \
             invalid, or the upload may have been aborted or completed: {id}"
        ),
    }
}

/// Where an S3-API key lives on backend `i`.
fn loc_on(bk: &Backends, i: usize, key: &CacheKey) -> Result<ObjectLoc, ObjectError> {
    let loc = key
        .loc()
        .ok_or_else(|| ObjectError::OriginOther("a multipart upload needs a bucket".into()))?;
    Ok(bk.get_backend(i).map_loc(&loc))
}

/// `src` as backend `i` names it.
fn source_on(bk: &Backends, i: usize, src: &CopySource) -> CopySource {
    CopySource {
        bucket: bk.get_backend(i).map_bucket(&src.bucket).to_owned(),
        ..src.clone()
    }
}

/// CreateMultipartUpload on every backend of the key's set that takes writes now; returns
/// the client's upload id.
pub async fn create<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    meta: PutMeta,
) -> Result<String, ObjectError> {
    let bk = ctx.objects().backends.clone();
    let members: Vec<usize> = set_of(&bk, key)
        .members
        .iter()
        .copied()
        .filter(|&i| bk.admit(i) != Admit::No)
        .collect();
    if members.is_empty() {
        return Err(ObjectError::OriginUnavailable(
            "no backend of the key's set takes writes now (maintenance or open circuits)".into(),
        ));
    }
    let calls = members.iter().map(|&i| {
        let (bk, meta) = (&bk, meta.clone());
        async move {
            let loc = loc_on(bk, i, key)?;
            let id = bk
                .on(
                    i,
                    |b| async move { b.bridge.create_multipart(&loc, meta).await },
                )
                .await?;
            Ok::<_, ObjectError>((i, id))
        }
    });
    let mut ids = Vec::new();
    let mut first_err = None;
    for res in join_all(calls).await {
        match res {
            Ok(pair) => ids.push(pair),
            Err(e) => {
                tracing::warn!(key = %key, error = %e,
                    "creating a multipart upload failed on a backend; it gets the object through the sync log");
                first_err.get_or_insert(e);
            }
        }
    }
    if ids.is_empty() {
        return Err(first_err.unwrap_or_else(|| {
            ObjectError::OriginUnavailable("no backend created the upload".into())
        }));
    }
    Ok(Upload { ids }.client_id(&bk))
}

/// UploadPart from a staged file, to every backend of the upload in parallel; the lead's
/// part ETag (unquoted) is the answer. A part another backend fails is that backend's
/// completion failing later (and its repair).
pub async fn upload_part<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    client_id: &str,
    part: u32,
    staged: &super::write::Staged,
) -> Result<String, ObjectError> {
    let bk = ctx.objects().backends.clone();
    let upload = Upload::parse(&bk, key, client_id)?;
    let calls = upload.ids.iter().map(|(i, id)| {
        let (bk, path, md5) = (&bk, staged.path.clone(), staged.md5_hex.clone());
        async move {
            let loc = loc_on(bk, *i, key)?;
            let r = bk.on(*i, |b| async move {
                b.bridge
                    .upload_part(&loc, id, part, path, 0, staged.len, Some(md5))
                    .await
            });
            Ok::<_, ObjectError>(r.await?)
        }
    });
    lead_answer(&bk, key, &upload, join_all(calls).await, "a part")
}

/// UploadPartCopy on every backend of the upload in parallel (each copies from its own
/// copy of the source); the lead's answer is the client's.
pub async fn upload_part_copy<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    client_id: &str,
    part: u32,
    src: &CopySource,
    range: Option<(u64, u64)>,
) -> Result<CopyResult, ObjectError> {
    let bk = ctx.objects().backends.clone();
    let upload = Upload::parse(&bk, key, client_id)?;
    let calls = upload.ids.iter().map(|(i, id)| {
        let bk = &bk;
        async move {
            let (loc, src) = (loc_on(bk, *i, key)?, source_on(bk, *i, src));
            let r = bk.on(*i, |b| async move {
                b.bridge.upload_part_copy(&loc, id, part, src, range).await
            });
            Ok::<_, ObjectError>(r.await?)
        }
    });
    lead_answer(&bk, key, &upload, join_all(calls).await, "a part copy")
}

/// The lead's result of a call made on every backend of an upload; the others' failures
/// are logged (their completion fails, and the object is repaired to them).
fn lead_answer<T>(
    bk: &Backends,
    key: &CacheKey,
    upload: &Upload,
    results: Vec<Result<T, ObjectError>>,
    what: &str,
) -> Result<T, ObjectError> {
    let mut results = results.into_iter();
    let lead = results.next().expect("an upload has a lead");
    for ((i, _), res) in upload.ids.iter().skip(1).zip(results) {
        if let Err(e) = res {
            tracing::warn!(key = %key, backend = %bk.get_backend(*i).name, error = %e,
                "{what} of a multipart upload failed on a backend; it gets the object through the sync log");
        }
    }
    lead
}

/// ListParts of the upload (the lead's parts).
pub async fn list_parts<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    client_id: &str,
    max_parts: u32,
    marker: Option<u32>,
) -> Result<PartsPage, ObjectError> {
    let bk = ctx.objects().backends.clone();
    let upload = Upload::parse(&bk, key, client_id)?;
    let (i, id) = upload.lead();
    let loc = loc_on(&bk, i, key)?;
    Ok(bk
        .on(i, |b| async move {
            b.bridge.list_parts(&loc, id, max_parts, marker).await
        })
        .await?)
}

/// Whether the lead backend lists the upload among the key's uploads (None: the listing
/// failed or was cut short). Some backends answer a call on an unknown upload with a
/// server error; the S3 edge asks this to answer `NoSuchUpload` instead.
pub async fn is_listed<C: ObjectCtx>(ctx: &C, key: &CacheKey, client_id: &str) -> Option<bool> {
    let bk = ctx.objects().backends.clone();
    let upload = Upload::parse(&bk, key, client_id).ok()?;
    let (i, id) = upload.lead();
    let loc = loc_on(&bk, i, key).ok()?;
    let params = nearcache_s3::UploadsParams {
        prefix: loc.key.clone(),
        max_uploads: 1000,
        ..Default::default()
    };
    let page = bk
        .on(i, |b| async move {
            b.bridge.list_uploads(&loc.bucket, params).await
        })
        .await
        .ok()?;
    if page.is_truncated {
        return None;
    }
    Some(
        page.uploads
            .iter()
            .any(|u| u.upload_id == id && u.key == loc.key),
    )
}

/// AbortMultipartUpload on every backend of the upload; the lead's answer is the
/// client's.
pub async fn abort<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    client_id: &str,
) -> Result<(), ObjectError> {
    let bk = ctx.objects().backends.clone();
    let upload = Upload::parse(&bk, key, client_id)?;
    let calls = upload.ids.iter().map(|(i, id)| abort_on(&bk, *i, key, id));
    lead_answer(&bk, key, &upload, join_all(calls).await, "an abort")
}

async fn abort_on(bk: &Backends, i: usize, key: &CacheKey, id: &str) -> Result<(), ObjectError> {
    let loc = loc_on(bk, i, key)?;
    Ok(bk
        .on(
            i,
            |b| async move { b.bridge.abort_multipart(&loc, id).await },
        )
        .await?)
}

/// CompleteMultipartUpload: on the lead (its ETag, unquoted, is the answer; its failure
/// the client's), then on the other backends in parallel, from the owner shard of the
/// key. Then the key's cached copy is dropped, and backends that did not complete get a
/// sync log entry before this returns.
pub async fn complete<C: ObjectCtx>(
    ctx: &Rc<C>,
    key: CacheKey,
    client_id: &str,
    parts: Vec<(u32, String)>,
) -> Result<String, ObjectError> {
    let bk = ctx.objects().backends.clone();
    let upload = Upload::parse(&bk, &key, client_id)?;
    let (lead, lead_id) = upload.lead();
    let loc = loc_on(&bk, lead, &key)?;
    let lead_parts = parts.clone();
    let etag = bk
        .on(lead, |b| async move {
            b.bridge.complete_multipart(&loc, lead_id, lead_parts).await
        })
        .await?;
    let others = upload.ids[1..].to_vec();
    let done = etag.clone();
    let owner = ctx.mesh().owner_of(key.as_str());
    crate::mesh::on_shard(ctx, owner, move |ctx| async move {
        let bk = ctx.objects().backends.clone();
        let mut run = Vec::new();
        let mut skipped = Vec::new();
        for (i, id) in others {
            if takes_now(&*ctx, &bk, i, &key) {
                run.push((i, id));
            } else {
                skipped.push((i, id));
            }
        }
        mark_busy(&*ctx, &bk, &run, &key, true);
        let calls = run.iter().map(|(i, id)| {
            let (bk, key, parts) = (&bk, &key, parts.clone());
            async move {
                let loc = loc_on(bk, *i, key)?;
                let r = bk.on(*i, |b| async move {
                    b.bridge.complete_multipart(&loc, id, parts).await
                });
                Ok::<_, ObjectError>(r.await?)
            }
        });
        let results = join_all(calls).await;
        mark_busy(&*ctx, &bk, &run, &key, false);
        let mut completed = vec![lead];
        for ((i, id), res) in run.iter().zip(results) {
            match res {
                Ok(e) if e == done => completed.push(*i),
                Ok(other) => tracing::warn!(key = %key, backend = %bk.get_backend(*i).name,
                    lead_etag = %done, etag = %other,
                    "a backend completed the upload with another ETag; repairing it from the lead"),
                Err(e) => {
                    tracing::warn!(key = %key, backend = %bk.get_backend(*i).name, error = %e,
                        "completing a multipart upload failed on a backend; it gets the object through the sync log");
                    skipped.push((*i, id.clone()));
                }
            }
        }
        // Their parts are of no use any more (best effort: a backend that is down keeps
        // them until its own lifecycle rules remove them).
        let aborts = skipped.iter().map(|(i, id)| abort_on(&bk, *i, &key, id));
        for ((i, _), res) in skipped.iter().zip(join_all(aborts).await) {
            if let Err(e) = res {
                tracing::debug!(key = %key, backend = %bk.get_backend(*i).name, error = %e,
                    "aborting a backend's share of a multipart upload failed");
            }
        }
        // Dropped once every backend has the new object (or its repair is queued): a
        // read through before that could find the old one.
        super::write::forget(&ctx, key.clone()).await?;
        log_missed(&*ctx, &key, &done, &completed).await
    })
    .await??;
    Ok(etag)
}

/// CopyObject to `dst` on every backend of its set at once; the answer is the first
/// backend's of the set that copied (an error only if none did). Then the destination's
/// cached copy is dropped, and backends that did not copy get a sync log entry before
/// this returns.
pub async fn copy<C: ObjectCtx>(
    ctx: &Rc<C>,
    dst: CacheKey,
    src: CopySource,
    meta: Option<PutMeta>,
) -> Result<CopyResult, ObjectError> {
    let owner = ctx.mesh().owner_of(dst.as_str());
    crate::mesh::on_shard(ctx, owner, move |ctx| async move {
        let bk = ctx.objects().backends.clone();
        let run: Vec<(usize, ())> = set_of(&bk, &dst)
            .members
            .iter()
            .filter(|&&i| takes_now(&*ctx, &bk, i, &dst))
            .map(|&i| (i, ()))
            .collect();
        if run.is_empty() {
            return Err(ObjectError::OriginUnavailable(
                "no backend of the key's set takes this write now (maintenance, open \
                 circuits, or another write of the key in flight)"
                    .into(),
            ));
        }
        mark_busy(&*ctx, &bk, &run, &dst, true);
        let calls = run.iter().map(|(i, ())| {
            let (bk, dst, meta) = (&bk, &dst, meta.clone());
            let src = source_on(bk, *i, &src);
            async move {
                let loc = loc_on(bk, *i, dst)?;
                let r = bk.on(*i, |b| async move {
                    b.bridge.copy_object(&loc, src, meta).await
                });
                Ok::<_, ObjectError>(r.await?)
            }
        });
        let results = join_all(calls).await;
        mark_busy(&*ctx, &bk, &run, &dst, false);
        let mut answer: Option<CopyResult> = None;
        let mut first_err = None;
        let mut copied = Vec::new();
        for ((i, ()), res) in run.iter().zip(results) {
            match res {
                Ok(r) => {
                    copied.push(*i);
                    answer.get_or_insert(r);
                }
                Err(e) => {
                    tracing::warn!(key = %dst, backend = %bk.get_backend(*i).name, error = %e,
                        "a server-side copy failed on a backend");
                    first_err.get_or_insert(e);
                }
            }
        }
        let Some(answer) = answer else {
            return Err(first_err.expect("a call was made"));
        };
        super::write::forget(&ctx, dst.clone()).await?;
        log_missed(&*ctx, &dst, &answer.etag, &copied).await?;
        Ok(answer)
    })
    .await?
}

/// Whether backend `i` may take a write of `key` directly now: it is admitted (not in
/// maintenance, circuit closed or this is its probe) and nothing of the key is queued or
/// in flight for it (which a direct write could overtake).
fn takes_now<C: ObjectCtx>(ctx: &C, bk: &Backends, i: usize, key: &CacheKey) -> bool {
    let name = &bk.get_backend(i).name;
    let queued = key.fits_store()
        && (ctx
            .objects()
            .fanout
            .borrow()
            .busy
            .contains(&(i, key.as_str().to_owned()))
            || ctx.store().sync_has(name, key.as_str()));
    !queued && bk.admit(i) != Admit::No
}

fn mark_busy<C: ObjectCtx, T>(
    ctx: &C,
    bk: &Backends,
    run: &[(usize, T)],
    key: &CacheKey,
    on: bool,
) {
    if !bk.is_multi() || !key.fits_store() {
        return;
    }
    let mut f = ctx.objects().fanout.borrow_mut();
    for (i, _) in run {
        let k = (*i, key.as_str().to_owned());
        if on {
            f.busy.insert(k);
        } else {
            f.busy.remove(&k);
        }
    }
}

/// Queues a copy of `key` (version `etag`) for every backend of its set but `have`.
async fn log_missed<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    etag: &str,
    have: &[usize],
) -> Result<(), ObjectError> {
    let bk = &ctx.objects().backends;
    let missed: Vec<usize> = set_of(bk, key)
        .members
        .iter()
        .copied()
        .filter(|i| !have.contains(i))
        .collect();
    if missed.is_empty() {
        return Ok(());
    }
    if !key.fits_store() {
        tracing::warn!(key = %key, backends = missed.len(),
            "a key too long for the sync log missed backends; the consistency check finds it");
        return Ok(());
    }
    let etag = etag.trim_matches('"');
    let entries = missed
        .iter()
        .map(|&i| {
            entry(
                bk,
                i,
                key.as_str(),
                SyncKind::Put,
                SyncCause::Missed,
                0,
                0,
                etag,
            )
        })
        .collect();
    let n = ctx.store().log_sync(entries, false).await?;
    ctx.objects()
        .metrics
        .sync_logged
        .fetch_add(n as u64, Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip_and_bad_ones_are_refused() {
        let pairs = [("dc2", "two/+= \"x\""), ("dc1", "one")];
        let id = encode(&pairs);
        assert!(id.starts_with(PREFIX));
        // Safe in a query string as it is.
        assert!(id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c)));
        let back = decode(&id).unwrap().unwrap();
        let back: Vec<(&str, &str)> = back.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(back, pairs);
        // A backend's own id is not ours to decode.
        assert_eq!(decode("2~abc.def").unwrap(), None);
        for bad in [
            "nc1.!!!".to_string(),
            format!("{PREFIX}{}", B64.encode("{}")),
            format!("{PREFIX}{}", B64.encode("[]")),
            format!("{PREFIX}{}", B64.encode(r#"[["dc1"]]"#)),
            format!("{PREFIX}{}", "A".repeat(MAX_ID_LEN)),
        ] {
            assert!(decode(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fuzz_decode() {
        bolero::check!().for_each(|b: &[u8]| {
            let _ = decode(&String::from_utf8_lossy(b));
        });
    }
}
