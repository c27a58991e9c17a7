//! Node-to-node requests signed with the cluster secret.
//!
//! With `cluster.secret` set, every request a node sends a peer carries
//!
//! ```text
//! x-nc-ts:    1764576000123                       wall-clock ms of the sender
//! x-nc-nonce: 01KBD0Z4YV6M3N4H4T8CDZ4QPR          a fresh ULID per request
//! x-nc-sig:   hex(HMAC-SHA256(request key, "nc-req-v1\n" method "\n" path?query "\n"
//!                 ts "\n" nonce "\n" then "name:value\n" for every header, by name))
//! ```
//!
//! The request key is derived from the secret (`nearcache_membership::auth`), so a
//! gossip tag is worthless here. Every header is covered except those HTTP/2 strips
//! or sets by itself (hop-by-hop, `content-length`): the cluster name, the sender's id,
//! the replica metadata and a proxied client's headers (its object id, consistency
//! level, `Host`) cannot be changed on the way. The body is not covered (replica and
//! proxied bodies stream; they are checked against their ETag where one is known);
//! mutual TLS between nodes protects it. The receiver refuses a timestamp outside the
//! replay window and a nonce it has seen (node-wide: a replay may land on any shard).

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use nearcache_membership::auth::{now_ms, ClusterSecret, Key, Replay, ReplayWindow};

/// The sender's wall-clock ms.
pub const H_TS: &str = "x-nc-ts";
/// A fresh ULID per request: what the replay window remembers.
pub const H_NONCE: &str = "x-nc-nonce";
/// The signature, lowercase hex.
pub const H_SIG: &str = "x-nc-sig";

const PURPOSE: &str = "request v1";
const CONTEXT: &[u8] = b"nc-req-v1\n";
/// Headers left out of the signature: HTTP/2 drops the hop-by-hop ones, and the client
/// adds `content-length` after signing when the body's size is known.
const UNSIGNED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "content-length",
    H_SIG,
];
/// Replay windows, picked by nonce: requests of different shard threads rarely wait on
/// each other.
const REPLAY_STRIPES: usize = 8;
/// Nonces remembered per stripe at most.
const REPLAY_STRIPE_ENTRIES: usize = 1 << 16;

/// Why a node-to-node request was refused. The messages name what was wrong, never a
/// key or signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    #[error("the request is not signed with the cluster secret ({0} is missing or invalid)")]
    Missing(&'static str),
    #[error("the signature does not match: the sender has another cluster secret, or the request was altered")]
    BadSignature,
    #[error("{0}")]
    Replay(#[from] Replay),
}

impl RequestAuthError {
    pub fn is_replay(&self) -> bool {
        matches!(self, RequestAuthError::Replay(_))
    }
}

/// Signs outgoing and checks incoming node-to-node requests.
#[derive(Debug)]
pub struct RequestAuth {
    key: Key,
    replay: [Mutex<ReplayWindow>; REPLAY_STRIPES],
}

impl RequestAuth {
    pub fn new(secret: &ClusterSecret, window: Duration) -> Self {
        RequestAuth {
            key: secret.key(PURPOSE),
            replay: std::array::from_fn(|_| {
                Mutex::new(ReplayWindow::new(window, REPLAY_STRIPE_ENTRIES))
            }),
        }
    }

    /// Adds the timestamp, nonce and signature to a request about to be sent.
    pub fn sign(&self, method: &Method, path_and_query: &str, headers: &mut HeaderMap) {
        self.sign_at(
            now_ms(),
            ulid::Ulid::generate(),
            method,
            path_and_query,
            headers,
        )
    }

    fn sign_at(
        &self,
        now: u64,
        nonce: ulid::Ulid,
        method: &Method,
        path_and_query: &str,
        headers: &mut HeaderMap,
    ) {
        headers.insert(H_TS, HeaderValue::from(now));
        headers.insert(
            H_NONCE,
            HeaderValue::from_str(&nonce.to_string()).expect("a ULID is ascii"),
        );
        let sig = self.signature(method, path_and_query, headers);
        headers.insert(
            H_SIG,
            HeaderValue::from_str(&hex::encode(sig)).expect("hex is ascii"),
        );
    }

    /// Checks a received request's signature, then its timestamp and nonce (in that
    /// order: only signed nonces take room in the replay window).
    pub fn verify(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<(), RequestAuthError> {
        self.verify_at(now_ms(), method, path_and_query, headers)
    }

    fn verify_at(
        &self,
        now: u64,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<(), RequestAuthError> {
        let text = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(RequestAuthError::Missing(name))
        };
        let ts: u64 = text(H_TS)?
            .parse()
            .map_err(|_| RequestAuthError::Missing(H_TS))?;
        let nonce = ulid::Ulid::from_string(text(H_NONCE)?)
            .map_err(|_| RequestAuthError::Missing(H_NONCE))?;
        let sig = hex::decode(text(H_SIG)?).map_err(|_| RequestAuthError::Missing(H_SIG))?;
        if sig.len() != 32 {
            return Err(RequestAuthError::Missing(H_SIG));
        }
        let parts = canonical(method, path_and_query, headers);
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_ref()).collect();
        if !self.key.verify(&refs, &sig) {
            return Err(RequestAuthError::BadSignature);
        }
        let id = nonce.0.to_le_bytes();
        let stripe = &self.replay[id[0] as usize % REPLAY_STRIPES];
        // A poisoned stripe only means a panic elsewhere mid-check: the window is a plain
        // map, still usable.
        let mut w = stripe.lock().unwrap_or_else(|e| e.into_inner());
        w.check(now, ts, id)?;
        Ok(())
    }

    fn signature(&self, method: &Method, path_and_query: &str, headers: &HeaderMap) -> [u8; 32] {
        let parts = canonical(method, path_and_query, headers);
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_ref()).collect();
        self.key.tag(&refs)
    }
}

/// What is signed, as a list of byte strings to concatenate. Header names are
/// lowercase in a `HeaderMap`; values of one name keep their order; a header name or
/// value cannot contain `\n`, so the text is unambiguous.
fn canonical<'a>(
    method: &'a Method,
    path_and_query: &'a str,
    headers: &'a HeaderMap,
) -> Vec<Box<[u8]>> {
    let mut names: Vec<&HeaderName> = headers
        .keys()
        .filter(|n| !UNSIGNED.contains(&n.as_str()))
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut out: Vec<Box<[u8]>> = Vec::with_capacity(2 + names.len());
    let mut head = Vec::with_capacity(64 + path_and_query.len());
    head.extend_from_slice(CONTEXT);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b'\n');
    head.extend_from_slice(path_and_query.as_bytes());
    head.push(b'\n');
    out.push(head.into());
    for name in names {
        for v in headers.get_all(name) {
            let mut line = Vec::with_capacity(name.as_str().len() + v.len() + 2);
            line.extend_from_slice(name.as_str().as_bytes());
            line.push(b':');
            line.extend_from_slice(v.as_bytes());
            line.push(b'\n');
            out.push(line.into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> RequestAuth {
        RequestAuth::new(
            &ClusterSecret::new(secret.as_bytes()).unwrap(),
            Duration::from_secs(60),
        )
    }

    fn signed(a: &RequestAuth, now: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-nc-from",
            HeaderValue::from_static("01KBD0Z4YV6M3N4H4T8CDZ4QPR"),
        );
        h.insert("x-nc-cluster", HeaderValue::from_static("prod"));
        h.append("x-meta-id", HeaderValue::from_static("A"));
        h.append("x-meta-id", HeaderValue::from_static("B"));
        a.sign_at(
            now,
            ulid::Ulid::generate(),
            &Method::PUT,
            "/_nc/v1/replica",
            &mut h,
        );
        h
    }

    const NOW: u64 = 1_764_576_000_000;
    const SECRET: &str = "0123456789abcdef-request";

    #[test]
    fn signed_requests_verify_once() {
        let a = auth(SECRET);
        let h = signed(&a, NOW);
        assert_eq!(
            a.verify_at(NOW + 10, &Method::PUT, "/_nc/v1/replica", &h),
            Ok(())
        );
        assert!(a
            .verify_at(NOW + 20, &Method::PUT, "/_nc/v1/replica", &h)
            .unwrap_err()
            .is_replay());
        // Another node with the same secret verifies it too (once).
        let b = auth(SECRET);
        assert_eq!(
            b.verify_at(NOW, &Method::PUT, "/_nc/v1/replica", &h),
            Ok(())
        );
        // content-length added after signing is not covered; header order is free.
        let mut h2 = signed(&a, NOW);
        h2.insert("content-length", HeaderValue::from_static("12"));
        let mut reordered = HeaderMap::new();
        for (k, v) in h2.iter().collect::<Vec<_>>().into_iter().rev() {
            reordered.append(k, v.clone());
        }
        // Values of one name keep their order (reversed above, so put them back).
        reordered.remove("x-meta-id");
        reordered.append("x-meta-id", HeaderValue::from_static("A"));
        reordered.append("x-meta-id", HeaderValue::from_static("B"));
        assert_eq!(
            b.verify_at(NOW, &Method::PUT, "/_nc/v1/replica", &reordered),
            Ok(())
        );
    }

    /// The cost of the signature on a typical proxied request (a native PUT's head:
    /// eight headers), signed then verified, with the replay window full. A measurement,
    /// not a check: run it in release.
    #[test]
    #[ignore = "measurement: cargo test --release -p nearcache --lib cluster::auth::tests::hmac_cost -- --ignored --nocapture"]
    fn hmac_cost() {
        let a = auth(SECRET);
        let mut base = HeaderMap::new();
        for (k, v) in [
            ("host", "10.0.0.5:8080"),
            ("user-agent", "curl/8.5.0"),
            ("accept", "*/*"),
            ("x-meta-id", "01KBD0Z4YV6M3N4H4T8CDZ4QPR"),
            ("x-meta-consistencylevel", "1"),
            ("content-type", "application/octet-stream"),
            ("x-nc-forwarded", "1"),
            ("x-nc-from", "01KBD0Z4YV6M3N4H4T8CDZ4QPS"),
            ("x-nc-cluster", "nearcache"),
        ] {
            base.insert(k, HeaderValue::from_static(v));
        }
        let n = 200_000u32;
        let mut signed = Vec::with_capacity(n as usize);
        let t = std::time::Instant::now();
        for _ in 0..n {
            let mut h = base.clone();
            a.sign(&Method::POST, "/api/v1/put", &mut h);
            signed.push(h);
        }
        let sign = t.elapsed() / n;
        let t = std::time::Instant::now();
        for h in &signed {
            a.verify(&Method::POST, "/api/v1/put", h).unwrap();
        }
        let verify = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(base.clone());
        }
        let clone = t.elapsed() / n;
        eprintln!(
            "node-to-node request signature: sign {:?} (of which {:?} copying the header map), verify {:?} (replay window of {} nonces)",
            sign, clone, verify, n
        );
    }

    #[test]
    fn altered_unsigned_stale_and_foreign_requests_are_refused() {
        let a = auth(SECRET);
        let h = signed(&a, NOW);
        let v = |h: &HeaderMap, m: &Method, p: &str| a.verify_at(NOW, m, p, h);
        assert_eq!(
            v(&h, &Method::GET, "/_nc/v1/replica"),
            Err(RequestAuthError::BadSignature)
        );
        assert_eq!(
            v(&h, &Method::PUT, "/_nc/v1/tombstone"),
            Err(RequestAuthError::BadSignature)
        );
        for (name, value) in [
            ("x-nc-cluster", "other"),
            ("x-nc-from", "01KBD0Z4YV6M3N4H4T8CDZ4QPS"),
            ("x-nc-ts", "1764576000001"),
            ("x-meta-id", "A"),
            ("x-extra", "1"),
        ] {
            let mut bad = h.clone();
            bad.insert(name, HeaderValue::from_static(value));
            assert_eq!(
                v(&bad, &Method::PUT, "/_nc/v1/replica"),
                Err(RequestAuthError::BadSignature),
                "{name} changed"
            );
        }
        for name in [H_TS, H_NONCE, H_SIG] {
            let mut bad = h.clone();
            bad.remove(name);
            assert_eq!(
                v(&bad, &Method::PUT, "/_nc/v1/replica"),
                Err(RequestAuthError::Missing(name))
            );
        }
        // Another secret's signature.
        let other = signed(&auth("another-secret-0123456789"), NOW);
        assert_eq!(
            v(&other, &Method::PUT, "/_nc/v1/replica"),
            Err(RequestAuthError::BadSignature)
        );
        // Signed long ago (a recorded request replayed later) or far ahead.
        let old = signed(&a, NOW - 61_000);
        assert!(matches!(
            v(&old, &Method::PUT, "/_nc/v1/replica"),
            Err(RequestAuthError::Replay(Replay::TooOld { .. }))
        ));
        let ahead = signed(&a, NOW + 61_000);
        assert!(matches!(
            v(&ahead, &Method::PUT, "/_nc/v1/replica"),
            Err(RequestAuthError::Replay(Replay::InFuture { .. }))
        ));
        // No message shows the signature.
        let sig = h[H_SIG].to_str().unwrap().to_string();
        for e in [
            RequestAuthError::BadSignature,
            RequestAuthError::Missing(H_SIG),
        ] {
            assert!(!e.to_string().contains(&sig));
        }
    }
}

/// Fuzz targets (bolero; `cargo test -p nearcache --lib cluster::auth::fuzz`): arbitrary
/// signature headers never panic and never verify; any single change to a signed
/// request's path, method or a header breaks it.
#[cfg(test)]
mod fuzz {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bolero::check;

    use super::*;

    fn auth() -> RequestAuth {
        RequestAuth::new(
            &ClusterSecret::new(b"fuzzing-request-secret-0123").unwrap(),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn arbitrary_signature_headers_are_refused() {
        let n = AtomicUsize::new(0);
        let a = auth();
        check!()
            .with_iterations(3000)
            .with_type::<(Vec<u8>, Vec<u8>, Vec<u8>, String)>()
            .for_each(|(ts, nonce, sig, path)| {
                n.fetch_add(1, Ordering::Relaxed);
                let mut h = HeaderMap::new();
                for (name, v) in [(H_TS, ts), (H_NONCE, nonce), (H_SIG, sig)] {
                    if let Ok(v) = HeaderValue::from_bytes(v) {
                        h.insert(name, v);
                    }
                }
                assert!(a.verify(&Method::GET, path, &h).is_err());
            });
        eprintln!(
            "fuzz target request_auth_arbitrary: {} cases",
            n.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn any_change_to_a_signed_request_breaks_it() {
        let n = AtomicUsize::new(0);
        let a = auth();
        check!()
            .with_iterations(2000)
            .with_type::<(String, Vec<(u8, String)>, u8, String)>()
            .for_each(|(path, headers, which, change)| {
                n.fetch_add(1, Ordering::Relaxed);
                let mut h = HeaderMap::new();
                for (k, v) in headers.iter().take(8) {
                    let name = format!("x-f{}", k % 16);
                    if let Ok(v) = HeaderValue::from_str(v) {
                        h.append(HeaderName::try_from(name).unwrap(), v);
                    }
                }
                let now = now_ms();
                a.sign_at(now, ulid::Ulid::generate(), &Method::PUT, path, &mut h);
                let mut changed = h.clone();
                let mut p = path.clone();
                let mut m = Method::PUT;
                match which % 3 {
                    0 => p.push_str(if change.is_empty() { "x" } else { change }),
                    1 => m = Method::POST,
                    _ => {
                        let v = HeaderValue::from_str(change)
                            .unwrap_or_else(|_| HeaderValue::from_static("?"));
                        changed.append("x-f-added", v);
                    }
                }
                assert!(a.verify_at(now, &m, &p, &changed).is_err());
                assert_eq!(a.verify_at(now, &Method::PUT, path, &h), Ok(()));
            });
        eprintln!(
            "fuzz target request_auth_changes: {} cases",
            n.load(Ordering::Relaxed)
        );
    }
}
